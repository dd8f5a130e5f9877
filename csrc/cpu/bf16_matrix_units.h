// Products of bfloat16 tiles on the CPU's matrix units (AMX on Intel Xeon
// since Sapphire Rapids), through the oneDNN micro-kernels that PyTorch
// exports as at::native::cpublas::brgemm. Accumulation is in float.
//
// The right operand is packed first into the VNNI layout those kernels read
// (bf16_layouts.h).
#pragma once

#include <cstdint>

#include "common/attention_params.h"

namespace selfattn::cpu {

// Whether this CPU and this torch build can run the products below.
bool bf16_matrix_units_available();

// C[m×n] = A[m×k]·B (+ C when accumulate), A row-major bfloat16 with leading
// dimension lda, B packed in the VNNI layout (k rounded up to even) with
// ldb ≥ n columns, of which the first n are used.
void bf16_product(int64_t m, int64_t n, int64_t k, const uint16_t* a, int64_t lda, const uint16_t* packed_b,
                  int64_t ldb, float* c, int64_t ldc, bool accumulate);

// Hands the matrix units back; call when a thread's products are done.
void release_matrix_units();

}  // namespace selfattn::cpu
