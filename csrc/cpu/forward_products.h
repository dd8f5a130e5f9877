// The two matrix products of the attention forward, S = scale·Q·Kᵀ and
// O += P·V, for one tile of query rows at a time. Two implementations with
// the same interface:
//   - FloatProducts runs BLAS (or portable loops) on float or double. It
//     reads the rows of q, k and v in place when they already are of the
//     accumulator type, and converts a copy of the tile otherwise. A tile
//     that spans blocks of a paged cache is a product per block (key_runs.h).
//   - MatrixUnitProducts runs bfloat16 on the CPU's matrix units: it packs
//     the keys and values of a head once per thread and reuses them for every
//     tile of query rows of that head (and of its GQA group).
#pragma once

#include <type_traits>

#include "cpu/bf16_matrix_units.h"
#include "cpu/key_runs.h"
#include "cpu/online_softmax.h"
#include "cpu/packed_head.h"
#include "cpu/tile_ops.h"
#include "cpu/vector_ops.h"

namespace selfattn::cpu {

// Up to this many query rows per head, the float products serve bfloat16
// too, and on a paged cache they are matrix-vector products.
constexpr int64_t kFewQueryRows = 16;

template <typename scalar_t, typename acc_t>
class FloatProducts {
 public:
  static constexpr bool kFusedSoftmax = false;

  explicit FloatProducts(const AttentionParams& p)
      : p_(p), q_copy_(kQueryTile * p.head_dim), k_copy_(kKeyTile * p.head_dim), v_copy_(kKeyTile * p.value_dim) {}

  void begin_head(int64_t, int64_t) {}

  void begin_query_tile(int64_t b, int64_t h, int64_t row0, int64_t rows) {
    q_ = row_operand<scalar_t>(p_.q, b, h, row0, rows, p_.head_dim, q_copy_.data());
  }

  // A tile of a paged cache is a product per block. For the few query rows
  // of a decoding step and a short block, they are matrix-vector products
  // (vector_ops.h): a BLAS call per block of 16 rows costs more than its work.
  void scores(const TileCoord& t, acc_t* s, int64_t ld) {
    const auto scale = static_cast<acc_t>(p_.scale);
    for_each_key_run(p_, t.b, t.col0, t.cols, [&](const KeyRun& run) {
      const auto k =
          row_operand<scalar_t>(p_.k, run.batch, kv_head(t), run.row, run.count, p_.head_dim, k_copy_.data());
      if (row_products(t, run)) {
        return dot_rows(q_.data, q_.ld, t.rows, k.data, k.ld, run.count, p_.head_dim, scale, s + run.first, ld);
      }
      gemm_abt(t.rows, run.count, p_.head_dim, q_.data, q_.ld, k.data, k.ld, s + run.first, ld, scale, acc_t(0));
    });
  }

  void add_probs_times_values(const TileCoord& t, acc_t* probs, int64_t ld, acc_t* out, int64_t ld_out) {
    for_each_key_run(p_, t.b, t.col0, t.cols, [&](const KeyRun& run) {
      const auto v =
          row_operand<scalar_t>(p_.v, run.batch, kv_head(t), run.row, run.count, p_.value_dim, v_copy_.data());
      if (row_products(t, run)) {
        return add_rows(out, ld_out, t.rows, v.data, v.ld, run.count, p_.value_dim, probs + run.first, ld);
      }
      gemm_ab(t.rows, p_.value_dim, run.count, probs + run.first, ld, v.data, v.ld, out, ld_out);
    });
  }

 private:
  int64_t kv_head(const TileCoord& t) const { return t.h / p_.group_size(); }
  bool row_products(const TileCoord& t, const KeyRun& run) const {
    return p_.block_table != nullptr && t.rows <= kFewQueryRows && run.count < kShortRun;
  }

  // Fewer keys than this in a block, and BLAS's per-call cost shows (measured on decoding steps).
  static constexpr int64_t kShortRun = 64;

  const AttentionParams& p_;
  Scratch<acc_t> q_copy_, k_copy_, v_copy_;
  RowOperand<acc_t> q_{nullptr, 0};
};

// For bfloat16 inputs with an even head dim, on a CPU with matrix units.
class MatrixUnitProducts {
 public:
  static constexpr bool kFusedSoftmax = true;

  // Packing a head's keys and values costs about what one tile of query rows
  // spends on them, so it pays only for more query rows than a decoding step
  // has. Its packing reads the keys of one batch in one run: no paged cache.
  static bool applies(const AttentionParams& p) {
    return p.dtype == ElementType::BFloat16 && p.head_dim > 0 && p.head_dim % 2 == 0 && p.value_dim > 0 &&
           p.max_seqlen_q > kFewQueryRows && p.block_table == nullptr && bf16_matrix_units_available();
  }

  explicit MatrixUnitProducts(const AttentionParams& p)
      : p_(p),
        keys_(packed_head_size(p.kv_len, p.head_dim)),
        values_(packed_head_size(p.kv_len, p.value_dim)),
        q_copy_(kQueryTile * p.head_dim),
        probs_(kQueryTile * kProbsLd),
        fuses_softmax_(!has_score_bias(p) && p.mask_kind == MaskKind::None && !p.dropout.enabled() && p.scale > 0) {}

  ~MatrixUnitProducts() { release_matrix_units(); }

  // Without a mask, a score bias or dropout, one tile's step takes two passes
  // over the scores: their max, then exp, sum and rounding to bfloat16, the
  // scale folded into both (fused_step).
  bool fuses_softmax() const { return fuses_softmax_; }

  template <typename Workspace>
  void fused_step(const TileCoord& t, float* s, int64_t ld, Workspace& ws) {
    product_of_keys(t, s, ld);
    hide_invisible_keys(p_, t, s, ld);
    const auto score_scale = static_cast<float>(p_.scale);
    online_softmax_step(
        t, s, ld, score_scale, ws,
        [&](int64_t r, const float* row, float max) {
          return exp_scaled_to_bfloat16(row, t.cols, score_scale, max, probs_.data() + r * kProbsLd);
        },
        [&](int64_t r) { std::fill_n(probs_.data() + r * kProbsLd, t.cols, uint16_t(0)); });
    product_of_values(t, ws.out.data(), p_.value_dim);
  }

  // Packs the keys and values of head (b, kv_head), unless they already are.
  void begin_head(int64_t b, int64_t kv_head) {
    if (b == packed_batch_ && kv_head == packed_head_) return;
    pack_head_transposed(p_.k, b, kv_head, p_.kv_len, p_.head_dim, keys_.data());
    pack_head_rows(p_.v, b, kv_head, p_.kv_len, p_.value_dim, values_.data());
    packed_batch_ = b;
    packed_head_ = kv_head;
  }

  // Q's raw bfloat16 bit patterns, in place where the products can read them.
  void begin_query_tile(int64_t b, int64_t h, int64_t row0, int64_t rows) {
    q_ = row_operand<uint16_t>(p_.q, b, h, row0, rows, p_.head_dim, q_copy_.data());
  }

  void scores(const TileCoord& t, float* s, int64_t ld) {
    product_of_keys(t, s, ld);
    for (int64_t r = 0; r < t.rows; ++r) scale(s + r * ld, t.cols, static_cast<float>(p_.scale));
  }

  // P is rounded to bfloat16 for the product, as in PyTorch's own bfloat16
  // kernels; the row sums were taken from the float values.
  void add_probs_times_values(const TileCoord& t, float* probs, int64_t ld, float* out, int64_t ld_out) {
    for (int64_t r = 0; r < t.rows; ++r) round_to_bfloat16(probs + r * ld, probs_.data() + r * kProbsLd, t.cols);
    product_of_values(t, out, ld_out);
  }

 private:
  // Q·Kᵀ, unscaled.
  void product_of_keys(const TileCoord& t, float* s, int64_t ld) {
    product_with_transposed(t.rows, t.cols, p_.head_dim, q_.data, q_.ld, keys_.data(), p_.kv_len, t.col0, s, ld);
  }

  // out += P·V, P in probs_ as bfloat16.
  void product_of_values(const TileCoord& t, float* out, int64_t ld_out) {
    // the zero column that matches the zero row of an odd tile of values
    if (t.cols % 2 == 1) {
      for (int64_t r = 0; r < t.rows; ++r) probs_.data()[r * kProbsLd + t.cols] = 0;
    }
    add_product_with_rows(t.rows, p_.value_dim, t.cols, probs_.data(), kProbsLd, values_.data(), p_.kv_len, t.col0,
                          out, ld_out);
  }

  // As the scores' (kScoreLd); an odd tile of keys leaves a spare column
  // for the zero column.
  static constexpr int64_t kProbsLd = kKeyTile;

  const AttentionParams& p_;
  Scratch<uint16_t> keys_, values_, q_copy_, probs_;
  int64_t packed_batch_ = -1, packed_head_ = -1;
  RowOperand<uint16_t> q_{nullptr, 0};
  bool fuses_softmax_;
};

}  // namespace selfattn::cpu
