// Compiles a function for AVX2 with FMA and F16C, whatever the flags of the
// file (x86-64-v3: Intel since Haswell, AMD since Zen), and the lane mask
// that the AVX2 loops' masked loads and stores share. Callers check
// avx2::available() (softmax_avx2.h) or avx2::gemm_available()
// (gemm_avx2.h) before they call one.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#define SELFATTN_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace selfattn::cpu::avx2 {

// All-ones in the lanes below `left` (none if left ≤ 0, all 8 from 8 up).
SELFATTN_AVX2 inline __m256i tail_mask(int64_t left) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::min<int64_t>(left, 8))), lane);
}

}  // namespace selfattn::cpu::avx2

#endif
