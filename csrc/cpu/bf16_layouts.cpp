// Each layout has a portable loop and, where the CPU runs it, an AVX-512 one
// over blocks of 16 rows: transposes of 16 × 16 32-bit lanes (a pair of
// bfloat16 or one float) in registers, where the portable loops write one
// element at a time down a column.
#include "cpu/bf16_layouts.h"

#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "cpu/avx512_target.h"
#include "cpu/softmax_avx512.h"
#include "cpu/vector_ops.h"

namespace selfattn::cpu {
namespace {

const uint16_t* row_of(const TensorView& m, int64_t b, int64_t h, int64_t row, int64_t col) {
  return static_cast<const uint16_t*>(m.data) + m.stride.offset(b, h, row, col);
}

// Two bfloat16 patterns as the 32-bit pair of the VNNI layout: lo first.
inline uint32_t pair(uint16_t lo, uint16_t hi) { return lo | static_cast<uint32_t>(hi) << 16; }

#if SELFATTN_HAS_AVX512_TARGET

constexpr int64_t kLanes = 16;

// v[i] ← lane i of every v[j]: the 16 × 16 transpose of 32-bit lanes, as
// pairs, then quadruples, then 128-bit quarters are exchanged.
SELFATTN_AVX512 void transpose_16x16(__m512i v[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(v[i], v[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(v[i], v[i + 1]);
  }
  for (int g = 0; g < 16; g += 4) {
    v[g] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
    v[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
    v[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
    v[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
  }
  // v[4g + c], 128-bit quarter l, now holds rows 4g … 4g + 3 of column 4l + c.
  for (int c = 0; c < 4; ++c) {
    t[c] = _mm512_shuffle_i32x4(v[c], v[4 + c], 0x88);
    t[4 + c] = _mm512_shuffle_i32x4(v[c], v[4 + c], 0xdd);
    t[8 + c] = _mm512_shuffle_i32x4(v[8 + c], v[12 + c], 0x88);
    t[12 + c] = _mm512_shuffle_i32x4(v[8 + c], v[12 + c], 0xdd);
  }
  for (int c = 0; c < 4; ++c) {
    v[c] = _mm512_shuffle_i32x4(t[c], t[8 + c], 0x88);
    v[8 + c] = _mm512_shuffle_i32x4(t[c], t[8 + c], 0xdd);
    v[4 + c] = _mm512_shuffle_i32x4(t[4 + c], t[12 + c], 0x88);
    v[12 + c] = _mm512_shuffle_i32x4(t[4 + c], t[12 + c], 0xdd);
  }
}

// Rows [r0, r0 + 16) × columns [c0, c0 + 32) of m into out transposed.
SELFATTN_AVX512 void transpose_block(const TensorView& m, int64_t b, int64_t h, int64_t r0, int64_t c0,
                                     uint16_t* out, int64_t ld_out) {
  __m512i v[16];
  for (int i = 0; i < 16; ++i) v[i] = _mm512_loadu_si512(row_of(m, b, h, r0 + i, c0));
  transpose_16x16(v);
  // v[i] holds the pairs (c0 + 2i, c0 + 2i + 1) of the 16 rows: the even
  // halves to one column, the odd to the next.
  const __m512i split = _mm512_set_epi16(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1,  //
                                         30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  for (int i = 0; i < 16; ++i) {
    const __m512i w = _mm512_permutexvar_epi16(split, v[i]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (c0 + 2 * i) * ld_out), _mm512_castsi512_si256(w));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (c0 + 2 * i + 1) * ld_out),
                        _mm512_extracti64x4_epi64(w, 1));
  }
}

// Rows [j0, j0 + 16) × columns [e0, e0 + 16) of m ← factor·xᵀ.
SELFATTN_AVX512 void store_transposed_block(const float* x, int64_t ld, int64_t j0, int64_t e0, float factor,
                                            const TensorView& m, int64_t b, int64_t h) {
  __m512i v[16];
  for (int i = 0; i < 16; ++i) v[i] = _mm512_castps_si512(_mm512_loadu_ps(x + (e0 + i) * ld + j0));
  transpose_16x16(v);
  const __m512 f = _mm512_set1_ps(factor);
  for (int i = 0; i < 16; ++i) {
    const __m256bh row = _mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_castsi512_ps(v[i]), f));
    auto* dst = static_cast<uint16_t*>(m.data) + m.stride.offset(b, h, j0 + i, e0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), reinterpret_cast<const __m256i&>(row));
  }
}

// Pairs i0 … i0 + 15 of the 16 rows from `row` of m, into packed rows
// i0 … i0 + 15 (n pairs apart) from `out`: each row's 16 pairs are one
// 64-byte load, each packed row of 16 keys one store.
SELFATTN_AVX512 void pack_transposed_block(const TensorView& m, int64_t b, int64_t h, int64_t row, int64_t i0,
                                           int64_t n, uint32_t* out) {
  __m512i v[16];
  for (int j = 0; j < 16; ++j) v[j] = _mm512_loadu_si512(row_of(m, b, h, row + j, 2 * i0));
  transpose_16x16(v);
  for (int i = 0; i < 16; ++i) _mm512_storeu_si512(out + (i0 + i) * n, v[i]);
}

// Rows lo and hi interleaved into n pairs, 32 at a time.
SELFATTN_AVX512 void interleave_rows(const uint16_t* lo, const uint16_t* hi, int64_t n, uint32_t* out) {
  const __m512i first = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,  //
                                         39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i second = _mm512_set_epi16(63, 31, 62, 30, 61, 29, 60, 28, 59, 27, 58, 26, 57, 25, 56, 24,  //
                                          55, 23, 54, 22, 53, 21, 52, 20, 51, 19, 50, 18, 49, 17, 48, 16);
  for (int64_t j = 0; j < n; j += 32) {
    const __mmask32 mask = n - j >= 32 ? ~__mmask32(0) : static_cast<__mmask32>((1ull << (n - j)) - 1);
    const __m512i a = _mm512_maskz_loadu_epi16(mask, lo + j);
    const __m512i c = _mm512_maskz_loadu_epi16(mask, hi + j);
    const int64_t left = std::min<int64_t>(32, n - j);
    const __mmask16 low = left >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << left) - 1);
    const __mmask16 high = left <= 16 ? __mmask16(0) : static_cast<__mmask16>((1u << (left - 16)) - 1);
    _mm512_mask_storeu_epi32(out + j, low, _mm512_permutex2var_epi16(a, first, c));
    _mm512_mask_storeu_epi32(out + j + 16, high, _mm512_permutex2var_epi16(a, second, c));
  }
}

// Packed pairs of rows i and i + 1 of x, n ≤ kPackedBlock columns, 16 at a time.
SELFATTN_AVX512 void pack_float_pair(const float* lo, const float* hi, int64_t n, uint32_t* out) {
  const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,  //
                                              23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  for (int64_t j = 0; j < n; j += kLanes) {
    const __mmask16 mask = n - j >= kLanes ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (n - j)) - 1);
    const __m512 a = _mm512_maskz_loadu_ps(mask, lo + j);
    const __m512 c = hi != nullptr ? _mm512_maskz_loadu_ps(mask, hi + j) : _mm512_setzero_ps();
    // a's 16 patterns in the low half, c's in the high, then interleaved.
    const __m512i both = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(c, a));
    _mm512_mask_storeu_epi32(out + j, mask, _mm512_permutexvar_epi16(interleave, both));
  }
}

#endif  // SELFATTN_HAS_AVX512_TARGET

bool use_avx512() {
#if SELFATTN_HAS_AVX512_TARGET
  return avx512::available();
#else
  return false;
#endif
}

}  // namespace

// With unit column stride, a row of M is k/2 pairs and the packed operand is
// their transpose: pair i of row j goes to packed pair (i, j).
void pack_transposed(const TensorView& m, int64_t b, int64_t h, int64_t row0, int64_t n, int64_t k, uint16_t* packed) {
  auto* out = reinterpret_cast<uint32_t*>(packed);
  int64_t j_done = 0;
#if SELFATTN_HAS_AVX512_TARGET
  if (use_avx512() && m.stride.col == 1 && (k / 2) % 16 == 0) {
    for (; j_done + 16 <= n; j_done += 16) {
      for (int64_t i = 0; i < k / 2; i += 16) pack_transposed_block(m, b, h, row0 + j_done, i, n, out + j_done);
    }
  }
#endif
  for (int64_t j = j_done; j < n; ++j) {
    const uint16_t* row = row_of(m, b, h, row0 + j, 0);
    if (m.stride.col == 1) {
      for (int64_t i = 0; i < k / 2; ++i) {
        uint32_t two;
        std::memcpy(&two, row + 2 * i, sizeof two);
        out[i * n + j] = two;
      }
    } else {
      for (int64_t i = 0; i < k / 2; ++i) {
        out[i * n + j] = pair(row[2 * i * m.stride.col], row[(2 * i + 1) * m.stride.col]);
      }
    }
  }
}

void pack_rows(const TensorView& m, int64_t b, int64_t h, int64_t row0, int64_t k, int64_t col0, int64_t n,
               uint16_t* packed) {
  auto* out = reinterpret_cast<uint32_t*>(packed);
  const int64_t sc = m.stride.col;
  for (int64_t i = 0; i < k; i += 2) {
    const uint16_t* lo = row_of(m, b, h, row0 + i, col0);
    uint32_t* o = out + (i / 2) * n;
    if (i + 1 == k) {  // the zero row that evens out an odd k
      for (int64_t j = 0; j < n; ++j) o[j] = pair(lo[j * sc], 0);
      continue;
    }
    const uint16_t* hi = row_of(m, b, h, row0 + i + 1, col0);
#if SELFATTN_HAS_AVX512_TARGET
    if (use_avx512() && sc == 1) {
      interleave_rows(lo, hi, n, o);
      continue;
    }
#endif
    for (int64_t j = 0; j < n; ++j) o[j] = pair(lo[j * sc], hi[j * sc]);
  }
}

void pack_float_rows(const float* x, int64_t ld, int64_t k, int64_t n, uint16_t* packed) {
  auto* out = reinterpret_cast<uint32_t*>(packed);
#if SELFATTN_HAS_AVX512_TARGET
  if (use_avx512()) {
    for (int64_t i = 0; i < k; i += 2) pack_float_pair(x + i * ld, i + 1 < k ? x + (i + 1) * ld : nullptr, n, out + (i / 2) * n);
    return;
  }
#endif
  uint16_t lo[kPackedBlock], hi[kPackedBlock];
  for (int64_t i = 0; i < k; i += 2) {
    round_to_bfloat16(x + i * ld, lo, n);
    if (i + 1 < k) {
      round_to_bfloat16(x + (i + 1) * ld, hi, n);
    } else {
      std::memset(hi, 0, sizeof(uint16_t) * n);
    }
    uint32_t* o = out + (i / 2) * n;
    for (int64_t j = 0; j < n; ++j) o[j] = pair(lo[j], hi[j]);
  }
}

void transpose_rows(const TensorView& m, int64_t b, int64_t h, int64_t row0, int64_t rows, int64_t cols,
                    uint16_t* out, int64_t ld_out) {
  int64_t r = 0, c_blocked = 0;
#if SELFATTN_HAS_AVX512_TARGET
  if (use_avx512() && m.stride.col == 1) {
    c_blocked = cols / 32 * 32;
    for (; r + 16 <= rows; r += 16) {
      for (int64_t c = 0; c < c_blocked; c += 32) transpose_block(m, b, h, row0 + r, c, out + r, ld_out);
    }
  }
#endif
  // What the blocks left: the last rows, and the last columns of the others.
  for (int64_t i = 0; i < rows; ++i) {
    const uint16_t* row = row_of(m, b, h, row0 + i, 0);
    for (int64_t c = i < r ? c_blocked : 0; c < cols; ++c) out[c * ld_out + i] = row[c * m.stride.col];
  }
  if (rows % 2 == 1) {
    for (int64_t c = 0; c < cols; ++c) out[c * ld_out + rows] = 0;
  }
}

void store_float_transposed(const float* x, int64_t ld, int64_t width, int64_t len, float factor,
                            const TensorView& m, int64_t b, int64_t h) {
  int64_t j = 0, e_blocked = 0;
#if SELFATTN_HAS_AVX512_TARGET
  if (use_avx512() && m.stride.col == 1) {
    e_blocked = width / 16 * 16;
    for (; j + 16 <= len; j += 16) {
      for (int64_t e = 0; e < e_blocked; e += 16) store_transposed_block(x, ld, j, e, factor, m, b, h);
    }
  }
#endif
  auto* base = static_cast<c10::BFloat16*>(m.data);
  for (int64_t i = 0; i < len; ++i) {
    c10::BFloat16* row = base + m.stride.offset(b, h, i, 0);
    for (int64_t e = i < j ? e_blocked : 0; e < width; ++e) row[e * m.stride.col] = c10::BFloat16(x[e * ld + i] * factor);
  }
}

void round_float_rows(const float* x, int64_t ld, int64_t rows, int64_t cols, uint16_t* out, int64_t ld_out) {
  for (int64_t r = 0; r < rows; ++r) {
    round_to_bfloat16(x + r * ld, out + r * ld_out, cols);
    if (cols % 2 == 1) out[r * ld_out + cols] = 0;
  }
}

}  // namespace selfattn::cpu
