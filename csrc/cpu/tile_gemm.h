// Small dense matrix products on packed, row-major tiles: the three shapes the
// attention kernels need. Accumulates into C (C += A·B etc.), in the
// accumulator type (float or double).
#pragma once

#include <cstdint>

namespace selfattn::cpu {

// C[m×n] += A[m×k] · B[n×k]ᵀ
template <typename T>
void gemm_abt(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc);

// C[m×n] += A[m×k] · B[k×n]
template <typename T>
void gemm_ab(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc);

// C[m×n] += A[k×m]ᵀ · B[k×n]
template <typename T>
void gemm_atb(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc);

// Whether the products run on the BLAS that PyTorch itself links (MKL on x86
// wheels) or on the portable loops; reported by torch_selfattn.build_info().
bool tile_gemm_uses_blas();

}  // namespace selfattn::cpu
