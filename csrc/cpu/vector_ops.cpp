#include "cpu/vector_ops.h"

#include <cstring>
#include <limits>

#include "cpu/vector_exp.h"

// Every function is cloned for AVX-512 (x86-64-v4), AVX2 + FMA (x86-64-v3)
// and the baseline, and an ifunc resolver picks the clone at load time. The
// loops are plain `omp simd` loops; exp vectorises through vector_exp.h.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SELFATTN_CLONED __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SELFATTN_CLONED
#endif

namespace selfattn::cpu {
namespace {

// Inlined into every clone, so that each is compiled for its own level.
#define SELFATTN_INLINE inline __attribute__((always_inline))

template <typename T>
SELFATTN_INLINE T max_element_impl(const T* x, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
  int nan = 0;  // an int, not a bool: GCC vectorises an | reduction, not an ||
#pragma omp simd reduction(max : m) reduction(| : nan)
  for (int64_t i = 0; i < n; ++i) {
    m = x[i] > m ? x[i] : m;
    nan |= x[i] != x[i];
  }
  return nan ? std::numeric_limits<T>::quiet_NaN() : m;
}

template <typename T>
SELFATTN_INLINE T exp_shifted_impl(T* x, int64_t n, T shift, T factor) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    const T e = vector_exp(x[i] - shift);
    sum += e;
    x[i] = e * factor;
  }
  return sum;
}

template <typename T>
SELFATTN_INLINE void scale_impl(T* x, int64_t n, T factor) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] *= factor;
}

template <typename T>
SELFATTN_INLINE void multiply_impl(T* x, const T* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] *= y[i];
}

// Four rows at a time: four independent sums hide the latency of the
// multiply-adds, and x is read once for them.
template <typename T>
SELFATTN_INLINE void dot_rows_impl(const T* x, const T* rows, int64_t ld, int64_t count, int64_t n, T factor, T* out) {
  int64_t j = 0;
  for (; j + 4 <= count; j += 4) {
    const T *r0 = rows + j * ld, *r1 = r0 + ld, *r2 = r1 + ld, *r3 = r2 + ld;
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t i = 0; i < n; ++i) {
      s0 += x[i] * r0[i];
      s1 += x[i] * r1[i];
      s2 += x[i] * r2[i];
      s3 += x[i] * r3[i];
    }
    out[j] = factor * s0;
    out[j + 1] = factor * s1;
    out[j + 2] = factor * s2;
    out[j + 3] = factor * s3;
  }
  for (; j < count; ++j) {
    const T* r = rows + j * ld;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; ++i) s += x[i] * r[i];
    out[j] = factor * s;
  }
}

// Four rows at a time, so that y is loaded and stored once for them.
template <typename T>
SELFATTN_INLINE void add_rows_impl(T* y, const T* rows, int64_t ld, int64_t count, int64_t n, const T* a) {
  int64_t j = 0;
  for (; j + 4 <= count; j += 4) {
    const T *r0 = rows + j * ld, *r1 = r0 + ld, *r2 = r1 + ld, *r3 = r2 + ld;
    const T a0 = a[j], a1 = a[j + 1], a2 = a[j + 2], a3 = a[j + 3];
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] += a0 * r0[i] + a1 * r1[i] + a2 * r2[i] + a3 * r3[i];
  }
  for (; j < count; ++j) {
    const T* r = rows + j * ld;
    const T aj = a[j];
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] += aj * r[i];
  }
}

template <typename T>
SELFATTN_INLINE void score_gradient_impl(const T* p, T* x, int64_t n, T d) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = p[i] * (x[i] - d);
}

template <typename T>
SELFATTN_INLINE void add_row_sums_impl(const T* p, const T* dp, int64_t n, double& prob_sum, double& weighted_sum) {
  double ps = 0, ws = 0;
#pragma omp simd reduction(+ : ps, ws)
  for (int64_t i = 0; i < n; ++i) {
    ps += static_cast<double>(p[i]);
    ws += static_cast<double>(p[i]) * static_cast<double>(dp[i]);
  }
  prob_sum += ps;
  weighted_sum += ws;
}

}  // namespace

// Asks what the clones' resolver asks.
const char* vector_ops_level() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4 (AVX-512)";
  if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3 (AVX2)";
#endif
  return "baseline";
}

SELFATTN_CLONED float max_element(const float* x, int64_t n) { return max_element_impl(x, n); }
SELFATTN_CLONED double max_element(const double* x, int64_t n) { return max_element_impl(x, n); }

SELFATTN_CLONED float exp_shifted(float* x, int64_t n, float shift, float factor) {
  return exp_shifted_impl(x, n, shift, factor);
}
SELFATTN_CLONED double exp_shifted(double* x, int64_t n, double shift, double factor) {
  return exp_shifted_impl(x, n, shift, factor);
}

SELFATTN_CLONED void scale(float* x, int64_t n, float factor) { scale_impl(x, n, factor); }
SELFATTN_CLONED void scale(double* x, int64_t n, double factor) { scale_impl(x, n, factor); }

SELFATTN_CLONED void multiply(float* x, const float* y, int64_t n) { multiply_impl(x, y, n); }
SELFATTN_CLONED void multiply(double* x, const double* y, int64_t n) { multiply_impl(x, y, n); }

SELFATTN_CLONED void dot_rows(const float* x, const float* rows, int64_t ld, int64_t count, int64_t n, float factor,
                              float* out) {
  dot_rows_impl(x, rows, ld, count, n, factor, out);
}
SELFATTN_CLONED void dot_rows(const double* x, const double* rows, int64_t ld, int64_t count, int64_t n,
                              double factor, double* out) {
  dot_rows_impl(x, rows, ld, count, n, factor, out);
}

SELFATTN_CLONED void add_rows(float* y, const float* rows, int64_t ld, int64_t count, int64_t n, const float* a) {
  add_rows_impl(y, rows, ld, count, n, a);
}
SELFATTN_CLONED void add_rows(double* y, const double* rows, int64_t ld, int64_t count, int64_t n, const double* a) {
  add_rows_impl(y, rows, ld, count, n, a);
}

SELFATTN_CLONED void score_gradient(const float* p, float* x, int64_t n, float d) { score_gradient_impl(p, x, n, d); }
SELFATTN_CLONED void score_gradient(const double* p, double* x, int64_t n, double d) {
  score_gradient_impl(p, x, n, d);
}

SELFATTN_CLONED void add_row_sums(const float* p, const float* dp, int64_t n, double& prob_sum, double& weighted_sum) {
  add_row_sums_impl(p, dp, n, prob_sum, weighted_sum);
}
SELFATTN_CLONED void add_row_sums(const double* p, const double* dp, int64_t n, double& prob_sum,
                                  double& weighted_sum) {
  add_row_sums_impl(p, dp, n, prob_sum, weighted_sum);
}

SELFATTN_CLONED void round_to_bfloat16(const float* x, uint16_t* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &x[i], sizeof bits);
    const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    y[i] = static_cast<uint16_t>(x[i] != x[i] ? 0x7fc0u : rounded);
  }
}

SELFATTN_CLONED void widen_bfloat16(const uint16_t* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bits = static_cast<uint32_t>(x[i]) << 16;
    std::memcpy(&y[i], &bits, sizeof bits);
  }
}

}  // namespace selfattn::cpu
