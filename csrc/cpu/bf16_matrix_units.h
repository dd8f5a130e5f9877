// Products of bfloat16 tiles on the CPU's matrix units (AMX on Intel Xeon
// since Sapphire Rapids), through the oneDNN micro-kernels that PyTorch
// exports as at::native::cpublas::brgemm. Accumulation is in float.
//
// The right operand is packed first into the VNNI layout those kernels read:
// pairs of consecutive rows along the reduction dimension interleaved,
// B[k][n] at packed[(k / 2)·2n + 2j + k % 2] for column j.
#pragma once

#include <cstdint>

#include "common/attention_params.h"

namespace selfattn::cpu {

// Whether this CPU and this torch build can run the products below.
bool bf16_matrix_units_available();

// Packs Mᵀ, for M = rows [row0, row0 + n) × columns [0, k) of head (b, h) of a
// bfloat16 tensor, as the right operand of A·Mᵀ (reduction over k, which
// must be even).
void pack_transposed(const TensorView& m, int64_t b, int64_t h, int64_t row0, int64_t n, int64_t k, uint16_t* packed);

// Packs M = rows [row0, row0 + k) × columns [col0, col0 + n) of head (b, h) as
// the right operand of A·M, the reduction over the k rows; an odd k gets a
// zero row.
void pack_rows(const TensorView& m, int64_t b, int64_t h, int64_t row0, int64_t k, int64_t col0, int64_t n,
               uint16_t* packed);

// C[m×n] = A[m×k]·B (+ C when accumulate), A row-major bfloat16 with leading
// dimension lda, B packed by one of the above (k rounded up to even) with
// ldb ≥ n columns, of which the first n are used.
void bf16_product(int64_t m, int64_t n, int64_t k, const uint16_t* a, int64_t lda, const uint16_t* packed_b,
                  int64_t ldb, float* c, int64_t ldc, bool accumulate);

// Hands the matrix units back; call when a thread's products are done.
void release_matrix_units();

}  // namespace selfattn::cpu
