// The AVX2 tile products. op(B) is packed into panels of 16 columns, each
// k rows of two vectors, zero-padded past n; a micro-kernel then computes a
// block of up to 6 rows × 16 columns of C in 12 registers, broadcasting one
// element of op(A) per row and step from where it lies (a row of A, or 6
// neighbours in a row of Aᵀ). The loops keep 6 rows of A in L1 while all the
// panels pass by, which suits the attention's tiles: op(B) (a tile of keys
// or values, k up to a few hundred) fits in L2 beside them.
#include "cpu/gemm_avx2.h"

#include <immintrin.h>

#include <algorithm>
#include <memory>
#include <new>

#include "cpu/avx2_target.h"
#include "cpu/softmax_avx2.h"

#if defined(__x86_64__) && defined(__GNUC__)

namespace selfattn::cpu::avx2 {
namespace {

constexpr int64_t kRows = 6;     // rows of C per micro-kernel call
constexpr int64_t kCols = 16;    // columns of C per micro-kernel call: two vectors
constexpr int64_t kPackedFloats = 64 * 1024;  // a packed block of op(B): 256 KiB, half of Zen 2's L2

// The 8×8 block at rows [0, 8) and columns [p, p + 8) of `rows` (leading
// dimension ld), transposed into 8 rows of dst, kCols floats apart.
SELFATTN_AVX2 void transpose_8x8(const float* rows, int64_t ld, float* dst) {
  __m256 r[8], t[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(rows + i * ld);
#pragma GCC unroll 4
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
#pragma GCC unroll 2
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    _mm256_store_ps(dst + i * kCols, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_store_ps(dst + (i + 4) * kCols, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

// One panel: for each p < k, op(B)(p, first + j) for j < width, then zeros
// to kCols. Full blocks move as vectors: 8×8 transposes for a transposed B,
// two vectors a row otherwise.
SELFATTN_AVX2 void pack_panel(const float* b, int64_t ldb, bool b_transposed, int64_t k, int64_t first,
                              int64_t width, float* panel) {
  if (b_transposed) {
    const int64_t full_k = width == kCols ? k / 8 * 8 : 0;
    for (int64_t p = 0; p < full_k; p += 8) {
      transpose_8x8(b + first * ldb + p, ldb, panel + p * kCols);
      transpose_8x8(b + (first + 8) * ldb + p, ldb, panel + p * kCols + 8);
    }
    for (int64_t p = full_k; p < k; ++p) {
      for (int64_t j = 0; j < width; ++j) panel[p * kCols + j] = b[(first + j) * ldb + p];
      std::fill(panel + p * kCols + width, panel + (p + 1) * kCols, 0.0f);
    }
    return;
  }
  for (int64_t p = 0; p < k; ++p) {
    const float* src = b + p * ldb + first;
    float* dst = panel + p * kCols;
    if (width == kCols) {
      _mm256_store_ps(dst, _mm256_loadu_ps(src));
      _mm256_store_ps(dst + 8, _mm256_loadu_ps(src + 8));
      continue;
    }
    for (int64_t j = 0; j < width; ++j) dst[j] = src[j];
    std::fill(dst + width, dst + kCols, 0.0f);
  }
}

// The packed panels of op(B) for columns [j0, j0 + cols): panel q holds, for
// each p, op(B)(p, j0 + 16q + 0..15), zeros past the last column.
void pack_panels(const float* b, int64_t ldb, bool b_transposed, int64_t k, int64_t j0, int64_t cols, float* out) {
  for (int64_t q = 0; q * kCols < cols; ++q) {
    pack_panel(b, ldb, b_transposed, k, j0 + q * kCols, std::min(kCols, cols - q * kCols), out + q * kCols * k);
  }
}

// C = alpha·acc + beta·C on one vector of C; beta = 0 leaves C unread.
SELFATTN_AVX2 inline __m256 combine(__m256 acc, const float* c, __m256i mask, bool full, float alpha, float beta) {
  const __m256 scaled = _mm256_mul_ps(acc, _mm256_set1_ps(alpha));
  if (beta == 0.0f) return scaled;
  const __m256 old = full ? _mm256_loadu_ps(c) : _mm256_maskload_ps(c, mask);
  return _mm256_fmadd_ps(old, _mm256_set1_ps(beta), scaled);
}

// C[rows × cols] of one block (rows ≤ 6, cols ≤ 16) from k steps over a
// packed panel. A's element (r, p) is at a[r·row_step + p·inner_step].
template <int kBlockRows>
SELFATTN_AVX2 void micro_kernel(const float* a, int64_t row_step, int64_t inner_step, const float* panel, int64_t k,
                                float* c, int64_t ldc, int64_t cols, float alpha, float beta) {
  __m256 acc[kBlockRows][2];
#pragma GCC unroll 6
  for (int r = 0; r < kBlockRows; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
#pragma GCC unroll 2
  for (int64_t p = 0; p < k; ++p) {
    const __m256 b0 = _mm256_load_ps(panel + p * kCols), b1 = _mm256_load_ps(panel + p * kCols + 8);
    const float* a_p = a + p * inner_step;
#pragma GCC unroll 6
    for (int r = 0; r < kBlockRows; ++r) {
      const __m256 a_rp = _mm256_broadcast_ss(a_p + r * row_step);
      acc[r][0] = _mm256_fmadd_ps(a_rp, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(a_rp, b1, acc[r][1]);
    }
  }
  const bool full = cols == kCols;
  const __m256i mask0 = tail_mask(cols), mask1 = tail_mask(cols - 8);
#pragma GCC unroll 6
  for (int r = 0; r < kBlockRows; ++r) {
    float* c_r = c + r * ldc;
    const __m256 v0 = combine(acc[r][0], c_r, mask0, full, alpha, beta);
    const __m256 v1 = combine(acc[r][1], c_r + 8, mask1, full, alpha, beta);
    if (full) {
      _mm256_storeu_ps(c_r, v0);
      _mm256_storeu_ps(c_r + 8, v1);
    } else {
      _mm256_maskstore_ps(c_r, mask0, v0);
      _mm256_maskstore_ps(c_r + 8, mask1, v1);
    }
  }
}

using MicroKernel = void (*)(const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t, int64_t, float,
                             float);
constexpr MicroKernel kMicroKernels[kRows + 1] = {nullptr,          micro_kernel<1>, micro_kernel<2>, micro_kernel<3>,
                                                  micro_kernel<4>, micro_kernel<5>, micro_kernel<6>};

// A thread's packing buffer of at least `floats`, 64-byte aligned for the
// panels' vector loads; it grows, and lives as long as the thread.
float* packing_buffer(int64_t floats) {
  struct Release {
    void operator()(float* p) const { ::operator delete[](p, std::align_val_t{64}); }
  };
  thread_local std::unique_ptr<float, Release> buffer;
  thread_local int64_t capacity = 0;
  if (floats > capacity) {
    const size_t bytes = static_cast<size_t>(floats) * sizeof(float);
    buffer.reset(static_cast<float*>(::operator new[](bytes, std::align_val_t{64})));
    capacity = floats;
  }
  return buffer.get();
}

}  // namespace

bool gemm_available() {
  static const bool yes = available() && !__builtin_cpu_supports("avx512f");
  return yes;
}

void gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, bool a_transposed, const float* b,
          int64_t ldb, bool b_transposed, float* c, int64_t ldc, float alpha, float beta) {
  const int64_t row_step = a_transposed ? 1 : lda, inner_step = a_transposed ? lda : 1;
  // Columns per packed block: as many panels as fit, at least one.
  const int64_t block_cols = std::max(kCols, kPackedFloats / std::max<int64_t>(k, 1) / kCols * kCols);
  float* packed = packing_buffer(std::max(kPackedFloats, k * kCols));
  for (int64_t j0 = 0; j0 < n; j0 += block_cols) {
    const int64_t cols = std::min(block_cols, n - j0);
    pack_panels(b, ldb, b_transposed, k, j0, cols, packed);
    for (int64_t i0 = 0; i0 < m; i0 += kRows) {
      const int64_t rows = std::min(kRows, m - i0);
      const float* a_rows = a + i0 * row_step;
      for (int64_t q = 0; q * kCols < cols; ++q) {
        kMicroKernels[rows](a_rows, row_step, inner_step, packed + q * kCols * k, k, c + i0 * ldc + j0 + q * kCols,
                            ldc, std::min(kCols, cols - q * kCols), alpha, beta);
      }
    }
  }
}

}  // namespace selfattn::cpu::avx2

#else

namespace selfattn::cpu::avx2 {
bool gemm_available() { return false; }
void gemm(int64_t, int64_t, int64_t, const float*, int64_t, bool, const float*, int64_t, bool, float*, int64_t, float,
          float) {}
}  // namespace selfattn::cpu::avx2

#endif
