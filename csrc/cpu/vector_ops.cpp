#include "cpu/vector_ops.h"

#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "cpu/softmax_avx2.h"
#include "cpu/softmax_avx512.h"
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
SELFATTN_INLINE T exp_affine_loop(T* x, int64_t n, T scale, T shift, T factor) {
  const ExpAffine<T> exp(scale, shift);
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    const T e = exp(x[i]);
    sum += e;
    x[i] = e * factor;
  }
  return sum;
}

// The last n % kBlock elements run as one whole block, padded with −inf
// (whose exp adds 0 to the sum): the compiler's scalar tail of this loop
// costs as much as several vector iterations, and the short rows of a
// causal tile are mostly tail.
template <typename T>
SELFATTN_INLINE T exp_affine_impl(T* x, int64_t n, T scale, T shift, T factor) {
  constexpr int64_t kBlock = 64 / sizeof(T);
  const int64_t whole = n / kBlock * kBlock;
  T sum = exp_affine_loop(x, whole, scale, shift, factor);
  if (whole == n) return sum;
  T block[kBlock];
  std::fill(block, block + kBlock, -std::numeric_limits<T>::infinity());
  std::copy(x + whole, x + n, block);
  sum += exp_affine_loop(block, kBlock, scale, shift, factor);
  std::copy(block, block + (n - whole), x + whole);
  return sum;
}

SELFATTN_INLINE uint16_t bfloat16_bits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;  // to nearest even
  return static_cast<uint16_t>(x != x ? 0x7fc0u : rounded);
}

// In chunks that stay in L1: one loop of float exp, one of rounding. As a
// single loop, the compiler's mix of 32- and 16-bit lanes ran at half width.
SELFATTN_INLINE float exp_scaled_to_bfloat16_impl(const float* x, int64_t n, float factor, float shift, uint16_t* y) {
  constexpr int64_t kChunk = 256;
  // The factor and the shift folded into one multiply-add, as in
  // softmax_avx512.cpp: bfloat16's rounding hides what the fold costs.
  const float a = factor * exp_constants::kLog2e, b = shift * exp_constants::kLog2e;
  float e[kChunk];
  float sum = 0;
  for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
    const int64_t m = std::min(kChunk, n - i0);
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < m; ++i) {
      e[i] = vector_exp2(std::fma(x[i0 + i], a, -b));
      sum += e[i];
    }
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) y[i0 + i] = bfloat16_bits(e[i]);
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

// Σ_i x_r[i]·rows_j[i] for one or two query rows r and four key rows j at
// a time: independent sums hide the latency of the multiply-adds, and each
// element of a key row is read once for both query rows.
template <typename T>
SELFATTN_INLINE void dot_block(const T* x, const T* rows, int64_t ld, int64_t n, T factor, T* out) {
  const T *r0 = rows, *r1 = r0 + ld, *r2 = r1 + ld, *r3 = r2 + ld;
  T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int64_t i = 0; i < n; ++i) {
    s0 += x[i] * r0[i];
    s1 += x[i] * r1[i];
    s2 += x[i] * r2[i];
    s3 += x[i] * r3[i];
  }
  out[0] = factor * s0;
  out[1] = factor * s1;
  out[2] = factor * s2;
  out[3] = factor * s3;
}

template <typename T>
SELFATTN_INLINE void dot_block_two(const T* x, int64_t ldx, const T* rows, int64_t ld, int64_t n, T factor, T* out,
                                   int64_t ldo) {
  const T *x0 = x, *x1 = x + ldx;
  const T *r0 = rows, *r1 = r0 + ld, *r2 = r1 + ld, *r3 = r2 + ld;
  T a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3, b0, b1, b2, b3)
  for (int64_t i = 0; i < n; ++i) {
    const T k0 = r0[i], k1 = r1[i], k2 = r2[i], k3 = r3[i];
    a0 += x0[i] * k0;
    a1 += x0[i] * k1;
    a2 += x0[i] * k2;
    a3 += x0[i] * k3;
    b0 += x1[i] * k0;
    b1 += x1[i] * k1;
    b2 += x1[i] * k2;
    b3 += x1[i] * k3;
  }
  const T sums[2][4] = {{a0, a1, a2, a3}, {b0, b1, b2, b3}};
  for (int r = 0; r < 2; ++r) {
    for (int c = 0; c < 4; ++c) out[r * ldo + c] = factor * sums[r][c];
  }
}

template <typename T>
SELFATTN_INLINE T dot_one(const T* x, const T* row, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += x[i] * row[i];
  return s;
}

template <typename T>
SELFATTN_INLINE void dot_rows_impl(const T* x, int64_t ldx, int64_t xrows, const T* rows, int64_t ld, int64_t count,
                                   int64_t n, T factor, T* out, int64_t ldo) {
  int64_t j = 0;
  for (; j + 4 <= count; j += 4) {
    int64_t r = 0;
    for (; r + 2 <= xrows; r += 2) {
      dot_block_two(x + r * ldx, ldx, rows + j * ld, ld, n, factor, out + r * ldo + j, ldo);
    }
    if (r < xrows) dot_block(x + r * ldx, rows + j * ld, ld, n, factor, out + r * ldo + j);
  }
  for (; j < count; ++j) {
    for (int64_t r = 0; r < xrows; ++r) out[r * ldo + j] = factor * dot_one(x + r * ldx, rows + j * ld, n);
  }
}

// y_r ← y_r + Σ_j a_r[j]·rows_j for Y rows of y and four key rows at a
// time: y is loaded and stored once per four key rows, and each element of
// a key row is read once for the Y rows.
template <int Y, typename T>
SELFATTN_INLINE void add_block(T* y, int64_t ldy, const T* rows, int64_t ld, int64_t n, const T* a, int64_t lda) {
  T w[Y][4];
  for (int r = 0; r < Y; ++r) {
    for (int c = 0; c < 4; ++c) w[r][c] = a[r * lda + c];
  }
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T k0 = rows[i], k1 = rows[ld + i], k2 = rows[2 * ld + i], k3 = rows[3 * ld + i];
    for (int r = 0; r < Y; ++r) y[r * ldy + i] += w[r][0] * k0 + w[r][1] * k1 + w[r][2] * k2 + w[r][3] * k3;
  }
}

template <typename T>
SELFATTN_INLINE void add_rows_impl(T* y, int64_t ldy, int64_t yrows, const T* rows, int64_t ld, int64_t count,
                                   int64_t n, const T* a, int64_t lda) {
  int64_t j = 0;
  for (; j + 4 <= count; j += 4) {
    int64_t r = 0;
    for (; r + 2 <= yrows; r += 2) add_block<2>(y + r * ldy, ldy, rows + j * ld, ld, n, a + r * lda + j, lda);
    if (r < yrows) add_block<1>(y + r * ldy, ldy, rows + j * ld, ld, n, a + r * lda + j, lda);
  }
  for (; j < count; ++j) {
    const T* row = rows + j * ld;
    for (int64_t r = 0; r < yrows; ++r) {
      T* yr = y + r * ldy;
      const T ar = a[r * lda + j];
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) yr[i] += ar * row[i];
    }
  }
}

template <typename T>
SELFATTN_INLINE void score_gradient_impl(T* p, T* x, int64_t n, T d, T p_factor) {
  if (p_factor == T(1)) {  // p stays as it is: no store
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) x[i] = p[i] * (x[i] - d);
    return;
  }
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T q = p[i] * p_factor;
    p[i] = q;
    x[i] = q * (x[i] - d);
  }
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

// The float softmax loops: softmax_avx512.cpp's or softmax_avx2.cpp's where
// the CPU runs them, the clones below elsewhere.
namespace {
SELFATTN_CLONED float max_element_cloned(const float* x, int64_t n) { return max_element_impl(x, n); }
SELFATTN_CLONED float exp_affine_cloned(float* x, int64_t n, float scale, float shift, float factor) {
  return exp_affine_impl(x, n, scale, shift, factor);
}
SELFATTN_CLONED void round_to_bfloat16_cloned(const float* x, uint16_t* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = bfloat16_bits(x[i]);
}
SELFATTN_CLONED float exp_scaled_to_bfloat16_cloned(const float* x, int64_t n, float factor, float shift,
                                                    uint16_t* y) {
  return exp_scaled_to_bfloat16_impl(x, n, factor, shift, y);
}
}  // namespace

float max_element(const float* x, int64_t n) {
  if (avx512::available()) return avx512::max_element(x, n);
  return avx2::available() ? avx2::max_element(x, n) : max_element_cloned(x, n);
}
float exp_affine(float* x, int64_t n, float scale, float shift, float factor) {
  if (avx512::available()) return avx512::exp_affine(x, n, scale, shift, factor);
  return avx2::available() ? avx2::exp_affine(x, n, scale, shift, factor)
                           : exp_affine_cloned(x, n, scale, shift, factor);
}
void round_to_bfloat16(const float* x, uint16_t* y, int64_t n) {
  return avx512::available() ? avx512::round_to_bfloat16(x, y, n) : round_to_bfloat16_cloned(x, y, n);
}
float exp_scaled_to_bfloat16(const float* x, int64_t n, float factor, float shift, uint16_t* y) {
  return avx512::available() ? avx512::exp_scaled_to_bfloat16(x, n, factor, shift, y)
                             : exp_scaled_to_bfloat16_cloned(x, n, factor, shift, y);
}

SELFATTN_CLONED double max_element(const double* x, int64_t n) { return max_element_impl(x, n); }
SELFATTN_CLONED double exp_affine(double* x, int64_t n, double scale, double shift, double factor) {
  return exp_affine_impl(x, n, scale, shift, factor);
}

// x − shift is x·1 − shift exactly, multiply-add or not.
float exp_shifted(float* x, int64_t n, float shift, float factor) { return exp_affine(x, n, 1.0f, shift, factor); }
double exp_shifted(double* x, int64_t n, double shift, double factor) { return exp_affine(x, n, 1.0, shift, factor); }

SELFATTN_CLONED void scale(float* x, int64_t n, float factor) { scale_impl(x, n, factor); }
SELFATTN_CLONED void scale(double* x, int64_t n, double factor) { scale_impl(x, n, factor); }

SELFATTN_CLONED void multiply(float* x, const float* y, int64_t n) { multiply_impl(x, y, n); }
SELFATTN_CLONED void multiply(double* x, const double* y, int64_t n) { multiply_impl(x, y, n); }

SELFATTN_CLONED void dot_rows(const float* x, int64_t ldx, int64_t xrows, const float* rows, int64_t ld,
                              int64_t count, int64_t n, float factor, float* out, int64_t ldo) {
  dot_rows_impl(x, ldx, xrows, rows, ld, count, n, factor, out, ldo);
}
SELFATTN_CLONED void dot_rows(const double* x, int64_t ldx, int64_t xrows, const double* rows, int64_t ld,
                              int64_t count, int64_t n, double factor, double* out, int64_t ldo) {
  dot_rows_impl(x, ldx, xrows, rows, ld, count, n, factor, out, ldo);
}

SELFATTN_CLONED void add_rows(float* y, int64_t ldy, int64_t yrows, const float* rows, int64_t ld, int64_t count,
                              int64_t n, const float* a, int64_t lda) {
  add_rows_impl(y, ldy, yrows, rows, ld, count, n, a, lda);
}
SELFATTN_CLONED void add_rows(double* y, int64_t ldy, int64_t yrows, const double* rows, int64_t ld, int64_t count,
                              int64_t n, const double* a, int64_t lda) {
  add_rows_impl(y, ldy, yrows, rows, ld, count, n, a, lda);
}

SELFATTN_CLONED void score_gradient(float* p, float* x, int64_t n, float d, float p_factor) {
  score_gradient_impl(p, x, n, d, p_factor);
}
SELFATTN_CLONED void score_gradient(double* p, double* x, int64_t n, double d, double p_factor) {
  score_gradient_impl(p, x, n, d, p_factor);
}

SELFATTN_CLONED void add_row_sums(const float* p, const float* dp, int64_t n, double& prob_sum, double& weighted_sum) {
  add_row_sums_impl(p, dp, n, prob_sum, weighted_sum);
}
SELFATTN_CLONED void add_row_sums(const double* p, const double* dp, int64_t n, double& prob_sum,
                                  double& weighted_sum) {
  add_row_sums_impl(p, dp, n, prob_sum, weighted_sum);
}

SELFATTN_CLONED void widen_bfloat16(const uint16_t* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bits = static_cast<uint32_t>(x[i]) << 16;
    std::memcpy(&y[i], &bits, sizeof bits);
  }
}

// c10::Half's conversion is a scalar bit manipulation, which no loop
// vectorises; vcvtph2ps converts 16 (AVX-512) or 8 (F16C) at a time.
void widen_half(const uint16_t* x, float* y, int64_t n) {
  if (avx512::available()) return avx512::widen_half(x, y, n);
  if (avx2::available()) return avx2::widen_half(x, y, n);
  for (int64_t i = 0; i < n; ++i) y[i] = c10::detail::fp16_ieee_to_fp32_value(x[i]);
}

}  // namespace selfattn::cpu
