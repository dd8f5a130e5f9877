// Named operations on the packed tiles of the CPU kernels. A tile is a
// row-major block of rows × cols elements in the accumulator type, with
// leading dimension `ld`. The kernels in attention_forward.cpp and
// attention_backward.cpp are written in terms of these.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <memory>
#include <new>
#include <type_traits>

#include "common/attention_params.h"
#include "common/numeric.h"
#include "common/score_rules.h"
#include "common/score_tile.h"
#include "cpu/tile_gemm.h"
#include "cpu/vector_ops.h"

namespace selfattn::cpu {

// Query rows and key columns per tile. Tall tiles keep the products
// efficient: each block of K or V that a product loads serves every row of
// the tile (PyTorch's kernel takes 256 rows too from L = 768). A score tile
// of 256 × 256 floats (256 KiB) leaves room in a 512 KiB L2 for the
// operands beside it: with 512 keys (PyTorch's choice), the float
// forward+backward ran 3-7% slower on Zen 2, the forward within 2% (an A/B
// of three shapes through bench_cpu.py's bench_config).
constexpr int64_t kQueryTile = 256;
constexpr int64_t kKeyTile = 256;

// The leading dimension of a tile of scores (or probabilities). Unpadded:
// the matrix units' products write it 64 columns at a time (see
// MatrixUnitProducts), and 32 columns of padding cost the bfloat16 forward
// about 5% over the benchmark's grid (one thread, measured on AMX).
constexpr int64_t kScoreLd = kKeyTile;

// Rows per tile of queries in a call: kQueryTile, or a quarter of it for a
// causal sequence shorter than 1024, where one tall tile would compute every
// score of the masked triangle: at L = 256, 64-row tiles compute 62% of the
// scores that one 256-row tile does. Forward and backward tile alike, so a
// score is computed over the same extent in both.
inline int64_t query_tile_rows(const AttentionParams& p) {
  constexpr int64_t kShortCausal = 4 * kQueryTile;
  return p.causal && p.max_seqlen_q < kShortCausal ? kQueryTile / 4 : kQueryTile;
}

// Contiguous scratch (of the accumulator type, or of raw 16-bit patterns),
// one per worker thread.
template <typename acc_t>
class Scratch {
 public:
  // Left uninitialised: the kernels write every element before reading it,
  // and a small call should not pay for zeroing tiles sized for large ones.
  // Aligned to a cache line: malloc's large blocks start 16 bytes past a
  // page, and MKL's products on them ran 2-3% slower (the fp32 forward at
  // L = 1024, 116 against 119 GFLOP/s on Zen 2).
  explicit Scratch(int64_t size)
      : storage(static_cast<acc_t*>(::operator new[](static_cast<size_t>(size) * sizeof(acc_t), kAlignment))),
        size_(size) {}
  acc_t* data() { return storage.get(); }
  const acc_t* data() const { return storage.get(); }
  acc_t& operator[](int64_t i) { return storage.get()[i]; }
  int64_t size() const { return size_; }

 private:
  static constexpr std::align_val_t kAlignment{64};
  struct Release {
    void operator()(acc_t* p) const { ::operator delete[](p, kAlignment); }
  };
  std::unique_ptr<acc_t, Release> storage;
  int64_t size_;
};

// The float values of n 16-bit elements, converted 16 at a time.
template <typename scalar_t>
void widen_row(const scalar_t* row, float* out, int64_t n) {
  const auto* bits = reinterpret_cast<const uint16_t*>(row);
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    widen_bfloat16(bits, out, n);
  } else {
    widen_half(bits, out, n);
  }
}

// Copies rows [row0, row0 + rows) and columns [0, cols) of head (b, h) of a
// strided tensor into a packed tile, converting to acc_t and multiplying by
// `factor` (the softmax scale is folded into Q this way).
template <typename scalar_t, typename acc_t>
void load_tile(const TensorView& src, int64_t b, int64_t h, int64_t row0, int64_t rows, int64_t cols, acc_t* dst,
               int64_t ld, acc_t factor = acc_t(1)) {
  const auto* base = static_cast<const scalar_t*>(src.data);
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* row = base + src.stride.offset(b, h, row0 + r, 0);
    acc_t* out = dst + r * ld;
    if constexpr (std::is_same_v<acc_t, float> &&
                  (std::is_same_v<scalar_t, c10::BFloat16> || std::is_same_v<scalar_t, c10::Half>)) {
      // Widening by bits: the element-wise conversion does not vectorise, and
      // at one query row (decoding) converting the keys is the whole cost.
      if (src.stride.col == 1) {
        widen_row(row, out, cols);
        if (factor != acc_t(1)) scale(out, cols, factor);
        continue;
      }
    }
    if (src.stride.col == 1) {
      for (int64_t c = 0; c < cols; ++c) out[c] = static_cast<acc_t>(row[c]) * factor;
    } else {
      for (int64_t c = 0; c < cols; ++c) out[c] = static_cast<acc_t>(row[c * src.stride.col]) * factor;
    }
  }
}

// Rows of a head as a BLAS operand: a pointer and a leading dimension.
template <typename acc_t>
struct RowOperand {
  const acc_t* data;
  int64_t ld;
};

// Rows [row0, row0 + rows) × columns [0, cols) of head (b, h) of src as acc_t:
// the tensor's own memory where BLAS can read it, else a converted copy.
template <typename scalar_t, typename acc_t>
RowOperand<acc_t> row_operand(const TensorView& src, int64_t b, int64_t h, int64_t row0, int64_t rows, int64_t cols,
                              acc_t* copy) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    const int64_t ld = src.stride.row;
    if (src.stride.col == 1 && ld >= std::max<int64_t>(cols, 1) && ld <= INT_MAX) {
      return {static_cast<const acc_t*>(src.data) + src.stride.offset(b, h, row0, 0), ld};
    }
  }
  load_tile<scalar_t>(src, b, h, row0, rows, cols, copy, cols);
  return {copy, cols};
}

// The inverse of load_tile: writes a packed tile into a strided tensor.
template <typename scalar_t, typename acc_t>
void store_tile(const acc_t* src, int64_t ld, const TensorView& dst, int64_t b, int64_t h, int64_t row0, int64_t rows,
                int64_t cols, acc_t factor = acc_t(1)) {
  auto* base = static_cast<scalar_t*>(dst.data);
  for (int64_t r = 0; r < rows; ++r) {
    scalar_t* row = base + dst.stride.offset(b, h, row0 + r, 0);
    for (int64_t c = 0; c < cols; ++c) row[c * dst.stride.col] = static_cast<scalar_t>(src[r * ld + c] * factor);
  }
}

// store_tile for a destination whose element type is known only at run time
// (the mask gradient takes the mask's dtype, which may differ from q's).
template <typename acc_t>
void store_tile_as(ElementType dtype, const acc_t* src, int64_t ld, const TensorView& dst, int64_t b, int64_t h,
                   int64_t row0, int64_t rows, int64_t cols) {
  switch (dtype) {
    case ElementType::Float32: return store_tile<float>(src, ld, dst, b, h, row0, rows, cols);
    case ElementType::Float64: return store_tile<double>(src, ld, dst, b, h, row0, rows, cols);
    case ElementType::Float16: return store_tile<c10::Half>(src, ld, dst, b, h, row0, rows, cols);
    case ElementType::BFloat16: return store_tile<c10::BFloat16>(src, ld, dst, b, h, row0, rows, cols);
    case ElementType::Bool: return;  // a boolean mask has no gradient
  }
}

template <typename acc_t>
void fill_tile(acc_t* tile, int64_t ld, int64_t rows, int64_t cols, acc_t value) {
  for (int64_t r = 0; r < rows; ++r) std::fill(tile + r * ld, tile + r * ld + cols, value);
}

// a ∘= b over the rows × cols of two tiles with the same leading dimension.
template <typename acc_t>
void multiply_tile(acc_t* a, const acc_t* b, int64_t ld, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) multiply(a + r * ld, b + r * ld, cols);
}

// The key columns that query rows [row0, row0 + rows) may see at all, the
// first rounded down to a whole key tile: every pass walks the same tiles,
// so a score is computed over the same extent (and rounds the same way)
// wherever it is recomputed. Key tiles outside a sliding window's band are
// skipped, which makes windowed attention cost O(L·w).
inline KeyRange visible_key_tiles(const AttentionParams& p, int64_t row0, int64_t rows) {
  const int64_t shift = diagonal_shift(p, p.q_len, p.kv_len);
  const int64_t first = visible_keys(p, row0, shift, p.kv_len).first;
  const int64_t end = visible_keys(p, row0 + rows - 1, shift, p.kv_len).end;
  return KeyRange{first / kKeyTile * kKeyTile, end};
}

// The query rows that see some column of [col0, col0 + cols), the first
// rounded down to a whole query tile.
inline KeyRange query_rows_seeing(const AttentionParams& p, int64_t col0, int64_t cols) {
  const int64_t shift = diagonal_shift(p, p.q_len, p.kv_len);
  const int64_t first = rows_seeing(p, col0, shift, p.q_len).first;
  const int64_t end = rows_seeing(p, col0 + cols - 1, shift, p.q_len).end;
  const int64_t tile_rows = query_tile_rows(p);
  return KeyRange{first / tile_rows * tile_rows, end};
}

// The tile of query rows that the i-th task of a head works on. Under causal
// masking row tiles cost more the lower they are, so tasks alternate between
// the two ends; parallel_for's contiguous chunks then get equal work.
inline int64_t balanced_tile_order(const AttentionParams& p, int64_t i, int64_t tiles) {
  if (!p.causal) return i;
  return i % 2 == 0 ? i / 2 : tiles - 1 - i / 2;
}

template <typename mask_t, typename acc_t>
void add_mask_elements(const AttentionParams& p, const TileCoord& t, acc_t* scores, int64_t ld) {
  const auto* base = static_cast<const mask_t*>(p.mask.data);
  for (int64_t r = 0; r < t.rows; ++r) {
    const mask_t* row = base + p.mask.stride.offset(t.b, t.h, t.row0 + r, t.col0);
    acc_t* s = scores + r * ld;
    if constexpr (std::is_same_v<acc_t, float> &&
                  (std::is_same_v<mask_t, c10::BFloat16> || std::is_same_v<mask_t, c10::Half>)) {
      // A 16-bit mask row widened by bits, as load_tile widens: its
      // element-wise conversion does not vectorise.
      if (p.mask.stride.col == 1) {
        float widened[kKeyTile];
        widen_row(row, widened, t.cols);
        for (int64_t c = 0; c < t.cols; ++c) s[c] += widened[c];
        continue;
      }
    }
    for (int64_t c = 0; c < t.cols; ++c) {
      const mask_t m = row[c * p.mask.stride.col];
      if constexpr (std::is_same_v<mask_t, bool>) {
        // Added, not assigned, as PyTorch adds a boolean mask's −inf: a NaN
        // score stays NaN and poisons its row.
        if (!m) s[c] += minus_infinity<acc_t>();
      } else {
        s[c] += static_cast<acc_t>(m);
      }
    }
  }
}

template <typename acc_t>
void add_mask(const AttentionParams& p, const TileCoord& t, acc_t* scores, int64_t ld) {
  switch (p.mask_dtype) {
    case ElementType::Bool: return add_mask_elements<bool>(p, t, scores, ld);
    case ElementType::Float32: return add_mask_elements<float>(p, t, scores, ld);
    case ElementType::Float64: return add_mask_elements<double>(p, t, scores, ld);
    case ElementType::Float16: return add_mask_elements<c10::Half>(p, t, scores, ld);
    case ElementType::BFloat16: return add_mask_elements<c10::BFloat16>(p, t, scores, ld);
  }
}

// Turns a tile of scaled scores into the scores the softmax sees: softcap,
// ALiBi, the attention mask, and −inf wherever causality or a window hides
// a key.
template <typename acc_t>
void apply_score_rules(const AttentionParams& p, const TileCoord& t, acc_t* scores, int64_t ld,
                       acc_t* slopes = nullptr) {
  if (has_score_bias(p)) add_score_bias(p, t, scores, ld, slopes);
  if (p.mask_kind != MaskKind::None) add_mask(p, t, scores, ld);
  hide_invisible_keys(p, t, scores, ld);
}

// The scores of a tile as the softmax sees them (apply_score_rules), from
// S = scale·(Q·Kᵀ) rounded as the forward's FloatProducts round it (the
// scale applied to the product).
template <typename acc_t>
void compute_scores(const AttentionParams& p, const TileCoord& t, const acc_t* q, int64_t ld_q, const acc_t* k,
                    int64_t ld_k, acc_t* scores, int64_t ld, acc_t* slopes) {
  gemm_abt(t.rows, t.cols, p.head_dim, q, ld_q, k, ld_k, scores, ld, static_cast<acc_t>(p.scale), acc_t(0));
  apply_score_rules(p, t, scores, ld, slopes);
}

// Probabilities recomputed from the forward's logsumexp,
// P = exp(score_scale·S − lse)·row_scale, row_scale renormalising each row
// (see row_statistics in attention_backward.cpp); score_scale is for scores
// left unscaled by their product. A fully masked row has lse = −inf and
// gets P = 0, not NaN.
template <typename acc_t>
void probabilities_from_logsumexp(const TileCoord& t, const acc_t* lse, const acc_t* row_scale, acc_t* scores,
                                  int64_t ld, acc_t score_scale = acc_t(1)) {
  for (int64_t r = 0; r < t.rows; ++r) {
    acc_t* s = scores + r * ld;
    const acc_t row_lse = lse[r], scale = row_scale[r];
    if (row_lse == minus_infinity<acc_t>()) {
      std::fill(s, s + t.cols, acc_t(0));
    } else {
      exp_affine(s, t.cols, score_scale, row_lse, scale);
    }
  }
}

}  // namespace selfattn::cpu
