// exp(x·scale − shift) for `#pragma omp simd` loops: the softmax's
// probabilities, a score scale and a row max (or logsumexp) applied.
//
// float: our own, branch-free, so that every lane takes the same path. glibc's
// vector expf (libmvec) sends any lane that is −inf, or that underflows, to
// the scalar expf one element at a time, and masked scores are −inf: at
// L = 128 causal that path took a third of the forward. It is 2^t for
// t = (x·scale − shift)·log2 e, where the row's max gives t = 0 and exactly 1
// (a softmax over one key is exactly 1 then, as std::exp gives): 2^f for
// f = t − round(t) in [−½, ½] is a degree-6 polynomial fitted for relative
// error (0.93 ulp in float arithmetic), times 2^round(t) from the exponent
// bits, in two halves so that overflow to inf rounds as one product would
// (as vscalefps does: softmax_avx512.cpp and softmax_avx2.cpp compute the
// same values). Against the Cody-Waite reduction and degree-7 polynomial it
// replaced, it takes about 18 vector operations instead of 25; the rounding
// of t costs a relative |t|·2⁻²⁴, which for probabilities (t ≤ 0, largest
// term 1) is at most 2.2e-8 absolute.
//
// Results below 2⁻¹²⁵ are flushed to 0: a product that underflows to a
// subnormal costs a microcode assist of ~100 cycles, and a masked score
// would pay it in every lane. No softmax sum can tell. −inf gives 0, +inf
// gives inf and NaN stays NaN, as from std::exp.
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

// The constants of the float exp, shared with its AVX-512 and AVX2 forms.
namespace exp_constants {
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kFlushBelow = -125.0f;  // t below this gives 0
constexpr float kClampAbove = 128.0f;   // 2^128 overflows, so clamping there changes no result
// 2^f on [−½, ½], highest power first.
constexpr float kExp2Poly[7] = {1.53458124e-4f, 1.33999309e-3f, 9.61848907e-3f, 5.55032864e-2f,
                                2.40226462e-1f, 6.93147182e-1f, 1.0f};
}  // namespace exp_constants

inline float vector_exp2(float t) {
  using namespace exp_constants;
  constexpr float kRound = 12582912.0f;  // 1.5·2²³: adding it rounds to an integer
  // Clamping at kFlushBelow keeps the flushed lanes' products normal. A NaN
  // passes through both comparisons and every operation below.
  float tc = t < kFlushBelow ? kFlushBelow : t;
  tc = tc > kClampAbove ? kClampAbove : tc;
  const float n = (tc + kRound) - kRound;
  const float f = tc - n;
  float p = kExp2Poly[0];
  // Inside a target_clones function GCC leaves this loop rolled, and the
  // loop around the exp then does not vectorise (seen on AVX2: scalar code).
#pragma GCC unroll 7
  for (int i = 1; i < 7; ++i) p = std::fma(p, f, kExp2Poly[i]);
  const auto k = static_cast<int32_t>(n);
  const int32_t half = k >> 1;
  const float e = p * exp2_of_integer(half) * exp2_of_integer(k - half);
  return t < kFlushBelow ? 0.0f : e;
}

// exp(x·scale − shift) for x of the loop's type.
template <typename T>
class ExpAffine;

template <>
class ExpAffine<float> {
 public:
  ExpAffine(float scale, float shift) : scale_(scale), shift_(shift) {}
  float operator()(float x) const {
    return vector_exp2(std::fma(x, scale_, -shift_) * exp_constants::kLog2e);
  }

 private:
  float scale_, shift_;
};

template <>
class ExpAffine<double> {
 public:
  ExpAffine(double scale, double shift) : scale_(scale), shift_(shift) {}
  double operator()(double x) const { return ::exp(x * scale_ - shift_); }

 private:
  double scale_, shift_;
};

}  // namespace selfattn::cpu
