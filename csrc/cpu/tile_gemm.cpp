#include "cpu/tile_gemm.h"

#include "common/env_flags.h"
#include "cpu/gemm_avx2.h"

#include <type_traits>

// PyTorch's CPU library exports the Fortran BLAS entry points of the BLAS it
// was built with (MKL on x86-64 wheels). They are declared weak, so a torch
// build without them leaves these null and the portable loops below run.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
// MKL's thread-local thread count, its C entry point (the lower-case names
// PyTorch exports are the Fortran one, which takes a pointer). Returns the
// previous count; 0 stands for the global one.
int MKL_Set_Num_Threads_Local(int threads) __attribute__((weak));
}

namespace selfattn::cpu {
namespace {

bool blas_disabled_by_env() {
  static const bool disabled = env_flag("TORCH_SELFATTN_PORTABLE_GEMM");
  return disabled;
}

bool have_blas(const float*) { return sgemm_ != nullptr && !blas_disabled_by_env(); }
bool have_blas(const double*) { return dgemm_ != nullptr && !blas_disabled_by_env(); }

// Float products on an AVX2 CPU without AVX-512 run our own (gemm_avx2.h):
// MKL's take 1.16-1.50x as long there on the attention's tiles
// (benchmarks/results/tile_products.md).
bool have_avx2_gemm() { return avx2::gemm_available() && !blas_disabled_by_env(); }

// Runs the product on gemm_avx2 where it applies; returns whether it did.
template <typename T>
bool avx2_gemm(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, bool a_transposed, const T* b, int64_t ldb,
               bool b_transposed, T* c, int64_t ldc, T alpha, T beta) {
  if constexpr (std::is_same_v<T, float>) {
    if (have_avx2_gemm()) {
      avx2::gemm(m, n, k, a, lda, a_transposed, b, ldb, b_transposed, c, ldc, alpha, beta);
      return true;
    }
  }
  return false;
}

void blas_gemm(const char* ta, const char* tb, int m, int n, int k, float alpha, const float* a, int lda,
               const float* b, int ldb, float beta, float* c, int ldc) {
  sgemm_(ta, tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

void blas_gemm(const char* ta, const char* tb, int m, int n, int k, double alpha, const double* a, int lda,
               const double* b, int ldb, double beta, double* c, int ldc) {
  dgemm_(ta, tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

// Runs MKL on the calling thread alone while it lives. MKL picks its code
// path, and with it the rounding, by context: outside an OpenMP region (where
// at::parallel_for runs a single chunk, or every chunk with one intra-op
// thread) it may split a product over its threads, inside one it runs alone.
// The backward recomputes the forward's scores and relies on getting the
// same bits in every pass (a mask gradient's query and key passes run with
// different task counts), and results must not depend on the thread count.
class OneBlasThread {
 public:
  OneBlasThread() : previous_(MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0) {}
  ~OneBlasThread() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous_);
  }
  OneBlasThread(const OneBlasThread&) = delete;
  OneBlasThread& operator=(const OneBlasThread&) = delete;

 private:
  int previous_;
};

// Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, so every call
// below swaps the operands and passes the row-major tiles as they lie.
template <typename T>
void column_major_gemm(const char* trans_b, const char* trans_a, int64_t m, int64_t n, int64_t k, const T* a,
                       int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc, T alpha, T beta) {
  const OneBlasThread one_thread;
  blas_gemm(trans_b, trans_a, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), alpha, b,
            static_cast<int>(ldb), a, static_cast<int>(lda), beta, c, static_cast<int>(ldc));
}

// The loops for a torch without BLAS symbols:
// C(i, j) = alpha·Σ_p A(i, p)·B(p, j) + beta·C(i, j), with
// A(i, p) = a[i·a_row + p·a_inner] and B(p, j) = b[p·b_inner + j·b_col].
// beta = 0 overwrites C, as BLAS does, so that garbage in C never leaks in.
template <typename T>
void portable_gemm(int64_t m, int64_t n, int64_t k, const T* a, int64_t a_row, int64_t a_inner, const T* b,
                   int64_t b_inner, int64_t b_col, T* c, int64_t ldc, T alpha, T beta) {
  for (int64_t i = 0; i < m; ++i) {
    T* c_row = c + i * ldc;
    for (int64_t j = 0; j < n; ++j) c_row[j] = beta == T(0) ? T(0) : beta * c_row[j];
    for (int64_t p = 0; p < k; ++p) {
      const T a_ip = alpha * a[i * a_row + p * a_inner];
      for (int64_t j = 0; j < n; ++j) c_row[j] += a_ip * b[p * b_inner + j * b_col];
    }
  }
}

}  // namespace

// k = 0 takes the loops too: BLAS rejects a leading dimension of 0 there.
template <typename T>
void gemm_abt(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc,
              T alpha, T beta) {
  if (m == 0 || n == 0) return;
  if (avx2_gemm(m, n, k, a, lda, false, b, ldb, true, c, ldc, alpha, beta)) return;
  if (k > 0 && have_blas(a)) return column_major_gemm("T", "N", m, n, k, a, lda, b, ldb, c, ldc, alpha, beta);
  portable_gemm(m, n, k, a, lda, int64_t(1), b, int64_t(1), ldb, c, ldc, alpha, beta);
}

template <typename T>
void gemm_ab(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc,
              T alpha, T beta) {
  if (m == 0 || n == 0) return;
  if (avx2_gemm(m, n, k, a, lda, false, b, ldb, false, c, ldc, alpha, beta)) return;
  if (k > 0 && have_blas(a)) return column_major_gemm("N", "N", m, n, k, a, lda, b, ldb, c, ldc, alpha, beta);
  portable_gemm(m, n, k, a, lda, int64_t(1), b, ldb, int64_t(1), c, ldc, alpha, beta);
}

template <typename T>
void gemm_atb(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc,
              T alpha, T beta) {
  if (m == 0 || n == 0) return;
  if (avx2_gemm(m, n, k, a, lda, true, b, ldb, false, c, ldc, alpha, beta)) return;
  if (k > 0 && have_blas(a)) return column_major_gemm("N", "T", m, n, k, a, lda, b, ldb, c, ldc, alpha, beta);
  portable_gemm(m, n, k, a, int64_t(1), lda, b, ldb, int64_t(1), c, ldc, alpha, beta);
}

const char* tile_gemm_kind() {
  if (have_avx2_gemm()) return "avx2";
  return have_blas(static_cast<const float*>(nullptr)) ? "blas" : "portable";
}

#define SELFATTN_INSTANTIATE_GEMMS(T)                                                                         \
  template void gemm_abt<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, T*, int64_t, T, T); \
  template void gemm_ab<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, T*, int64_t, T, T);  \
  template void gemm_atb<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, T*, int64_t, T, T);
SELFATTN_INSTANTIATE_GEMMS(float)
SELFATTN_INSTANTIATE_GEMMS(double)
#undef SELFATTN_INSTANTIATE_GEMMS

}  // namespace selfattn::cpu
