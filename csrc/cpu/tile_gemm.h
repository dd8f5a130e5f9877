// Small dense matrix products on row-major tiles: the three shapes the
// attention kernels need, as C = alpha·op(A)·op(B) + beta·C in the
// accumulator type (float or double). The operands may be rows of the input
// tensors themselves (any leading dimension, unit column stride).
#pragma once

#include <cstdint>

namespace selfattn::cpu {

// C[m×n] = alpha·A[m×k]·B[n×k]ᵀ + beta·C
template <typename T>
void gemm_abt(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc,
              T alpha = T(1), T beta = T(1));

// C[m×n] = alpha·A[m×k]·B[k×n] + beta·C
template <typename T>
void gemm_ab(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc,
              T alpha = T(1), T beta = T(1));

// C[m×n] = alpha·A[k×m]ᵀ·B[k×n] + beta·C
template <typename T>
void gemm_atb(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc,
              T alpha = T(1), T beta = T(1));

// Where the float products run: "avx2" (gemm_avx2.h, on AVX2 CPUs without
// AVX-512), "blas" (the BLAS PyTorch itself links: MKL on x86 wheels) or
// "portable" (the loops); reported by torch_selfattn.build_info(). Double
// products run on the BLAS where there is one.
const char* tile_gemm_kind();

}  // namespace selfattn::cpu
