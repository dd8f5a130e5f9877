// exp for `#pragma omp simd` loops.
//
// float: our own, branch-free, so that every lane takes the same path. glibc's
// vector expf (libmvec) sends any lane that is −inf, or that underflows, to
// the scalar expf one element at a time, and masked scores are −inf: at
// L = 128 causal that path took a third of the forward. Cody-Waite range
// reduction to |r| ≤ ln2/2, then a degree-7 Taylor polynomial (truncation
// error 5e-9, below half an ulp) and a scale by 2ⁿ built from the exponent
// bits (in two halves, so that overflow to inf is rounded as the hardware
// rounds a product). Measured: within 0.92 ulp of the exact value.
//
// Results below exp(-87) = 1.6e-38 are flushed to 0: a product that
// underflows to a subnormal costs a microcode assist of ~100 cycles, and a
// masked score would pay it in every lane. No softmax sum can tell (the
// largest term is 1). −inf gives 0, +inf gives inf and NaN stays NaN, as
// from std::exp.
//
// double: GCC vectorises calls to exp only when glibc's headers mark it as
// having a vector variant, and they do that only under -ffast-math, which the
// kernels cannot use. Declaring the variant here gets libmvec's calls with
// IEEE semantics; double is the checking path, where exactness comes first.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__GLIBC__) && defined(__GNUC__) && !defined(__clang__)
extern "C" double exp(double) noexcept __attribute__((simd("notinbranch")));
#endif

namespace selfattn::cpu {

// 2^k for an integer k in [-126, 127], from its exponent bits.
inline float exp2_of_integer(int32_t k) {
  const uint32_t bits = static_cast<uint32_t>(k + 127) << 23;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// The constants of the float exp, shared with its AVX-512 form
// (softmax_avx512.cpp), which computes the same values.
namespace exp_constants {
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2High = 0.693359375f;  // 9 significant bits: n·kLn2High is exact
constexpr float kLn2Low = -2.12194440e-4f;
constexpr float kFlushBelow = -87.0f;
constexpr float kClampAbove = 89.0f;  // exp(89) overflows, so clamping there changes no result
// The Taylor coefficients 1/7! … 1/0!, highest first.
constexpr float kTaylor[8] = {1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f};
}  // namespace exp_constants

inline float vector_exp(float x) {
  using namespace exp_constants;
  constexpr float kRound = 12582912.0f;  // 1.5·2²³: adding it rounds to an integer
  // Clamping at kFlushBelow keeps the masked lanes from underflowing. A NaN
  // passes through both comparisons and every operation below.
  float xc = x < kFlushBelow ? kFlushBelow : x;  // one max and one min each, as written
  xc = xc > kClampAbove ? kClampAbove : xc;
  const float n = (xc * kLog2e + kRound) - kRound;
  const float r = std::fma(n, -kLn2Low, std::fma(n, -kLn2High, xc));
  float p = kTaylor[0];
  for (int i = 1; i < 8; ++i) p = std::fma(p, r, kTaylor[i]);
  const auto k = static_cast<int32_t>(n);
  const int32_t half = k >> 1;
  const float e = p * exp2_of_integer(half) * exp2_of_integer(k - half);
  return x < kFlushBelow ? 0.0f : e;
}

inline double vector_exp(double x) { return ::exp(x); }

}  // namespace selfattn::cpu
