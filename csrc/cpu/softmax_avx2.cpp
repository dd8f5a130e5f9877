// The float softmax loops in AVX2 intrinsics. Compiled for AVX2 from the
// portable loops, GCC spent 38 instructions on the exp of 8 scores, most of
// them blends and masks for vector_exp2's clamps; here the clamps are a max
// and a min (which pass a NaN through), 2ⁿ is an integer add, and the exp
// takes 15. A tail of n % 8 elements runs as a masked vector, not as
// scalars.
#include "cpu/softmax_avx2.h"

#include <immintrin.h>

#include <limits>

#include "cpu/avx2_target.h"
#include "cpu/vector_exp.h"

#if defined(__x86_64__) && defined(__GNUC__)

namespace selfattn::cpu::avx2 {
namespace {

constexpr int64_t kLanes = 8;

// Lanes past the mask read as −inf, whose exp is 0 and which no max sees.
SELFATTN_AVX2 inline __m256 load(const float* x, __m256i mask) {
  return _mm256_blendv_ps(_mm256_set1_ps(-std::numeric_limits<float>::infinity()), _mm256_maskload_ps(x, mask),
                          _mm256_castsi256_ps(mask));
}

// vector_exp2, operation for operation.
SELFATTN_AVX2 inline __m256 exp2(__m256 t) {
  using namespace exp_constants;
  // t ≥ kFlushBelow, or NaN: the lanes whose result is not flushed to 0.
  const __m256 kept = _mm256_cmp_ps(t, _mm256_set1_ps(kFlushBelow), _CMP_NLT_UQ);
  // max and min return their second operand when one is NaN: t, here.
  __m256 tc = _mm256_max_ps(_mm256_set1_ps(kFlushBelow), t);
  tc = _mm256_min_ps(_mm256_set1_ps(kClampAbove), tc);
  const __m256 n = _mm256_round_ps(tc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(tc, n);
  __m256 p = _mm256_set1_ps(kExp2Poly[0]);
  for (int i = 1; i < 7; ++i) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2Poly[i]));
  // p·2ⁿ by adding n to p's exponent bits: p is in [0.7, 1.42] and n in
  // [−125, 128], so the sum is a normal float, or inf where the clamped n is
  // 128 and p is 1, the values of vector_exp2's two products. (A NaN's n
  // converts to 0x80000000, which the shift turns into 0: p stays NaN.)
  const __m256i n_bits = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
  const __m256 e = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), n_bits));
  return _mm256_and_ps(e, kept);
}

SELFATTN_AVX2 inline float sum_lanes(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

SELFATTN_AVX2 inline float max_lanes(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

// kScaled = false skips the multiply by a factor of 1 (the forward's
// exp_shifted): 8% of the loop's time on Zen 2, whose two FMA pipes it
// keeps busy.
template <bool kScaled>
SELFATTN_AVX2 float exp_affine_loop(float* x, int64_t n, float scale, float shift, float factor) {
  const __m256 a = _mm256_set1_ps(scale), s = _mm256_set1_ps(shift), f = _mm256_set1_ps(factor);
  const __m256 log2e = _mm256_set1_ps(exp_constants::kLog2e);
  __m256 sum = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const __m256 e = exp2(_mm256_mul_ps(_mm256_fmsub_ps(_mm256_loadu_ps(x + i), a, s), log2e));
    sum = _mm256_add_ps(sum, e);
    _mm256_storeu_ps(x + i, kScaled ? _mm256_mul_ps(e, f) : e);
  }
  if (i < n) {
    const __m256i mask = tail_mask(n - i);
    const __m256 e = exp2(_mm256_mul_ps(_mm256_fmsub_ps(load(x + i, mask), a, s), log2e));
    sum = _mm256_add_ps(sum, e);
    _mm256_maskstore_ps(x + i, mask, kScaled ? _mm256_mul_ps(e, f) : e);
  }
  return sum_lanes(sum);
}

}  // namespace

bool available() {
  static const bool yes =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return yes;
}

SELFATTN_AVX2 float max_element(const float* x, int64_t n) {
  __m256 m0 = _mm256_set1_ps(-std::numeric_limits<float>::infinity()), m1 = m0;
  __m256 nan = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + kLanes);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, b, _CMP_UNORD_Q));
    m0 = _mm256_max_ps(m0, a);
    m1 = _mm256_max_ps(m1, b);
  }
  for (; i < n; i += kLanes) {
    const __m256 a = load(x + i, tail_mask(n - i));
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
    m0 = _mm256_max_ps(m0, a);
  }
  if (_mm256_movemask_ps(nan)) return std::numeric_limits<float>::quiet_NaN();
  return max_lanes(_mm256_max_ps(m0, m1));
}

SELFATTN_AVX2 float exp_affine(float* x, int64_t n, float scale, float shift, float factor) {
  return factor == 1.0f ? exp_affine_loop<false>(x, n, scale, shift, factor)
                        : exp_affine_loop<true>(x, n, scale, shift, factor);
}

SELFATTN_AVX2 void widen_half(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
  }
  for (; i < n; ++i) y[i] = _cvtsh_ss(x[i]);
}

}  // namespace selfattn::cpu::avx2

#else  // not x86-64 with GCC or Clang: the portable loops run everywhere

namespace selfattn::cpu::avx2 {
bool available() { return false; }
float max_element(const float*, int64_t) { return 0; }
float exp_affine(float*, int64_t, float, float, float) { return 0; }
void widen_half(const uint16_t*, float*, int64_t) {}
}  // namespace selfattn::cpu::avx2

#endif
