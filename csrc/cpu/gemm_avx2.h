// Float tile products written for AVX2 with FMA, for CPUs without AVX-512.
// On Zen 2, one thread, MKL's products on the attention's tiles (a few
// hundred rows and columns, k = 32 to 256) reach 54-72% of the FMA peak and
// these 79-94% (benchmarks/results/tile_products.md). tile_gemm.cpp calls
// them where gemm_available() holds; the results differ from MKL's in
// rounding only.
#pragma once

#include <cstdint>

namespace selfattn::cpu::avx2 {

// Whether this CPU runs the AVX2 loops (avx2::available(), softmax_avx2.h)
// and has no AVX-512: where MKL runs its generic AVX2 products, and these
// are faster.
bool gemm_available();

// C[m×n] = alpha·op(A)·op(B) + beta·C, row-major, where op(A)(i, p) is
// a[i·lda + p], or a[p·lda + i] if a_transposed, and op(B)(p, j) is
// b[p·ldb + j], or b[j·ldb + p] if b_transposed. beta = 0 never reads C.
// Each element is one sum over p in order, so the same operands give the
// same bits whatever m, n, the tile's position or the thread.
void gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, bool a_transposed, const float* b,
          int64_t ldb, bool b_transposed, float* c, int64_t ldc, float alpha, float beta);

}  // namespace selfattn::cpu::avx2
