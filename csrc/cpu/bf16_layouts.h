// The layouts in which the matrix units read their operands (see
// bf16_matrix_units.h), made from the tensors' rows and from float tiles.
// The right operand of a product is packed in the VNNI layout: pairs of
// consecutive rows along the reduction dimension interleaved, B[k][n] at
// packed[(k / 2)·2n + 2j + k % 2] for column j. An odd reduction length gets
// a zero row. Elements are raw bfloat16 bit patterns.
#pragma once

#include <cstdint>

#include "common/attention_params.h"

namespace selfattn::cpu {

// Packs Mᵀ, for M = rows [row0, row0 + n) × columns [0, k) of head (b, h) of a
// bfloat16 tensor, as the right operand of A·Mᵀ (reduction over k, which
// must be even).
void pack_transposed(const TensorView& m, int64_t b, int64_t h, int64_t row0, int64_t n, int64_t k, uint16_t* packed);

// Packs M = rows [row0, row0 + k) × columns [col0, col0 + n) of head (b, h) as
// the right operand of A·M, the reduction over the k rows.
void pack_rows(const TensorView& m, int64_t b, int64_t h, int64_t row0, int64_t k, int64_t col0, int64_t n,
               uint16_t* packed);

// Columns of a packed block: the products run a call per block (see
// packed_head.h), and pack_float_rows takes at most this many.
constexpr int64_t kPackedBlock = 64;

// Packs the float tile x (k rows × n ≤ kPackedBlock columns, leading
// dimension ld), rounded to bfloat16, as the right operand of A·x, the
// reduction over its k rows.
void pack_float_rows(const float* x, int64_t ld, int64_t k, int64_t n, uint16_t* packed);

// out[c·ld_out + r] = M[row0 + r][c]: rows [row0, row0 + rows) × columns
// [0, cols) of head (b, h) transposed, as a left operand whose reduction runs
// over those rows; an odd row count gets a zero column.
void transpose_rows(const TensorView& m, int64_t b, int64_t h, int64_t row0, int64_t rows, int64_t cols,
                    uint16_t* out, int64_t ld_out);

// Rows [0, len) × columns [0, width) of head (b, h) of a bfloat16 tensor ←
// factor·xᵀ, for the float tile x (width × len, leading dimension ld).
void store_float_transposed(const float* x, int64_t ld, int64_t width, int64_t len, float factor,
                            const TensorView& m, int64_t b, int64_t h);

// The float tile x (rows × cols, leading dimension ld) rounded to bfloat16
// as a left operand whose reduction runs over its cols; an odd column count
// gets a zero column.
void round_float_rows(const float* x, int64_t ld, int64_t rows, int64_t cols, uint16_t* out, int64_t ld_out);

}  // namespace selfattn::cpu
