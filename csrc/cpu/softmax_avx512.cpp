// The float softmax loops in AVX-512 intrinsics. The portable loops of
// vector_ops.cpp, compiled for AVX-512, turn vector_exp2's clamps and its
// two-step scaling by 2ⁿ into blends and integer shifts. Here the scaling is
// one vscalefps, which also rounds an overflow to inf, and the flush of tiny
// results is its zero mask. The values are vector_exp2's (exp_constants: the
// same polynomial, the same operations), and a tail of n % 16 elements runs
// as a masked vector, not as scalars.
#include "cpu/softmax_avx512.h"

#include <immintrin.h>

#include <limits>

#include "cpu/avx512_target.h"
#include "cpu/vector_exp.h"

#if SELFATTN_HAS_AVX512_TARGET

namespace selfattn::cpu::avx512 {
namespace {

constexpr int64_t kLanes = 16;

SELFATTN_AVX512 inline __mmask16 tail_mask(int64_t left) {
  return left >= kLanes ? __mmask16(0xffff) : static_cast<__mmask16>((1u << left) - 1);
}

// Lanes past the mask read as −inf, whose exp is 0 and which no max sees.
SELFATTN_AVX512 inline __m512 load(const float* x, __mmask16 mask) {
  return _mm512_mask_loadu_ps(_mm512_set1_ps(-std::numeric_limits<float>::infinity()), mask, x);
}

// vector_exp2 (vector_exp.h): the clamps, the polynomial and the flush are
// the same; vscalefps scales by 2ⁿ, with the flush as its zero mask.
SELFATTN_AVX512 inline __m512 exp2(__m512 t) {
  using namespace exp_constants;
  // t ≥ kFlushBelow, or NaN: the lanes whose result is not flushed to 0. The
  // flushed lanes need no lower clamp: whatever they compute is masked out.
  const __mmask16 kept = _mm512_cmp_ps_mask(t, _mm512_set1_ps(kFlushBelow), _CMP_NLT_UQ);
  // min returns its second operand when one is NaN: t, here.
  const __m512 tc = _mm512_min_ps(_mm512_set1_ps(kClampAbove), t);
  const __m512 n = _mm512_roundscale_ps(tc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(tc, n);
  __m512 p = _mm512_set1_ps(kExp2Poly[0]);
  for (int i = 1; i < 7; ++i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2Poly[i]));
  return _mm512_maskz_scalef_ps(kept, p, n);
}

SELFATTN_AVX512 inline float sum_lanes(__m512 v) { return _mm512_reduce_add_ps(v); }

// Sixteen bfloat16 patterns of v (nearest even), in the low half of the
// instruction that converts two vectors.
SELFATTN_AVX512 inline __m256i to_bfloat16(__m512 v) {
  return _mm512_castsi512_si256(reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(v, v)));
}

}  // namespace

bool available() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("fma");
  return yes;
}

SELFATTN_AVX512 float max_element(const float* x, int64_t n) {
  __m512 m0 = _mm512_set1_ps(-std::numeric_limits<float>::infinity()), m1 = m0;
  __mmask16 nan = 0;
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + kLanes);
    nan |= _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q);
    m0 = _mm512_max_ps(m0, a);
    m1 = _mm512_max_ps(m1, b);
  }
  for (; i < n; i += kLanes) {
    const __m512 a = load(x + i, tail_mask(n - i));
    nan |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
    m0 = _mm512_max_ps(m0, a);
  }
  if (nan) return std::numeric_limits<float>::quiet_NaN();
  return _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
}

SELFATTN_AVX512 float exp_affine(float* x, int64_t n, float scale, float shift, float factor) {
  const __m512 a = _mm512_set1_ps(scale), s = _mm512_set1_ps(shift), f = _mm512_set1_ps(factor);
  const __m512 log2e = _mm512_set1_ps(exp_constants::kLog2e);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += kLanes) {
    const __mmask16 mask = tail_mask(n - i);
    const __m512 e = exp2(_mm512_mul_ps(_mm512_fmsub_ps(load(x + i, mask), a, s), log2e));
    sum = _mm512_add_ps(sum, e);
    _mm512_mask_storeu_ps(x + i, mask, _mm512_mul_ps(e, f));
  }
  return sum_lanes(sum);
}

// Two vectors a step: one instruction converts both, and 32 probabilities
// make one whole 64-byte store.
SELFATTN_AVX512 float exp_scaled_to_bfloat16(const float* x, int64_t n, float factor, float shift, uint16_t* y) {
  const float log2e = exp_constants::kLog2e;
  const __m512 f = _mm512_set1_ps(factor * log2e), s = _mm512_set1_ps(shift * log2e);
  __m512 sum0 = _mm512_setzero_ps(), sum1 = sum0;
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const __m512 e0 = exp2(_mm512_fmsub_ps(_mm512_loadu_ps(x + i), f, s));
    const __m512 e1 = exp2(_mm512_fmsub_ps(_mm512_loadu_ps(x + i + kLanes), f, s));
    sum0 = _mm512_add_ps(sum0, e0);
    sum1 = _mm512_add_ps(sum1, e1);
    _mm512_storeu_si512(y + i, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(e1, e0)));
  }
  for (; i < n; i += kLanes) {
    const __mmask16 mask = tail_mask(n - i);
    const __m512 e = exp2(_mm512_fmsub_ps(load(x + i, mask), f, s));
    sum0 = _mm512_add_ps(sum0, e);
    _mm256_mask_storeu_epi16(y + i, mask, to_bfloat16(e));
  }
  return sum_lanes(_mm512_add_ps(sum0, sum1));
}

SELFATTN_AVX512 void round_to_bfloat16(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; i += kLanes) {
    const __mmask16 mask = tail_mask(n - i);
    _mm256_mask_storeu_epi16(y + i, mask, to_bfloat16(_mm512_maskz_loadu_ps(mask, x + i)));
  }
}

SELFATTN_AVX512 void widen_half(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i += kLanes) {
    const __mmask16 mask = tail_mask(n - i);
    _mm512_mask_storeu_ps(y + i, mask, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, x + i)));
  }
}

}  // namespace selfattn::cpu::avx512

#else  // not x86-64 with GCC or Clang: the portable loops run everywhere

namespace selfattn::cpu::avx512 {
bool available() { return false; }
float max_element(const float*, int64_t) { return 0; }
float exp_affine(float*, int64_t, float, float, float) { return 0; }
float exp_scaled_to_bfloat16(const float*, int64_t, float, float, uint16_t*) { return 0; }
void round_to_bfloat16(const float*, uint16_t*, int64_t) {}
void widen_half(const uint16_t*, float*, int64_t) {}
}  // namespace selfattn::cpu::avx512

#endif
