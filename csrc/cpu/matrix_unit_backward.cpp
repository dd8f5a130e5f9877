// One task per key/value head and the query heads of its GQA group, as the
// float kernel's head pass (attention_backward.cpp): each tile of query rows
// sweeps its keys twice, first for its row statistics, then for the
// gradients. dK and dV accumulate transposed (dKᵀ = Qᵀ·dS), so that the
// tiles of dS and P are the products' right operands, packed in one pass
// from float, and Q and dO are transposed once per tile of query rows.
#include "cpu/matrix_unit_backward.h"

#include <c10/util/BFloat16.h>

#include "cpu/backward_rows.h"
#include "cpu/bf16_layouts.h"
#include "cpu/bf16_matrix_units.h"
#include "cpu/packed_head.h"
#include "cpu/parallel_tasks.h"
#include "cpu/tile_ops.h"
#include "cpu/vector_ops.h"

namespace selfattn::cpu {
namespace {

// A float accumulator of a head's dKᵀ or dVᵀ: width rows of the head's keys.
// Its rows are padded off multiples of 4 KiB, which would put them in the
// same cache sets.
struct TransposedRows {
  int64_t ld;
  Scratch<float> data;

  TransposedRows(int64_t width, int64_t len) : ld((len + 15) / 16 * 16 + 16), data(width * ld) {}
  float* at(int64_t col0) { return data.data() + col0; }
  void zero() { std::fill_n(data.data(), data.size(), 0.0f); }
};

class HeadBackward {
 public:
  explicit HeadBackward(const AttentionBackwardParams& bp)
      : bp_(bp),
        p_(bp.fwd),
        E_(p_.head_dim),
        Ev_(p_.value_dim),
        keeps_all_(keeps_all_tiles<float>(p_, p_.kv_len)),
        keys_t_(packed_head_size(p_.kv_len, E_)),
        keys_(packed_head_size(p_.kv_len, E_)),
        values_t_(packed_head_size(p_.kv_len, Ev_)),
        q_copy_(kQueryTile * E_),
        dout_copy_(kQueryTile * Ev_),
        q_t_(E_ * kQueryTile),
        dout_t_(Ev_ * kQueryTile),
        ds_rows_(kQueryTile * kScoreLd),
        ds_pairs_(kQueryTile * kKeyTile),
        p_pairs_(kQueryTile * kKeyTile),
        probs_((keeps_all_ ? ceil_div(p_.kv_len, kKeyTile) : 1) * kQueryTile * kScoreLd),
        grads_(probs_.size()),
        dq_(kQueryTile * E_),
        lse_(kQueryTile),
        scale_(kQueryTile),
        delta_(kQueryTile),
        prob_sum_(kQueryTile),
        weighted_sum_(kQueryTile),
        dk_t_(E_, p_.kv_len),
        dv_t_(Ev_, p_.kv_len) {}

  ~HeadBackward() { release_matrix_units(); }

  void run(int64_t b, int64_t kv_head) {
    pack_head_transposed(p_.k, b, kv_head, p_.kv_len, E_, keys_t_.data());
    pack_head_rows(p_.k, b, kv_head, p_.kv_len, E_, keys_.data());
    pack_head_transposed(p_.v, b, kv_head, p_.kv_len, Ev_, values_t_.data());
    dk_t_.zero();
    dv_t_.zero();
    const int64_t tile_rows = query_tile_rows(p_);
    for (int64_t h = kv_head * p_.group_size(); h < (kv_head + 1) * p_.group_size(); ++h) {
      for (int64_t row0 = 0; row0 < p_.q_len; row0 += tile_rows) {
        query_tile(b, h, row0, std::min(tile_rows, p_.q_len - row0));
      }
    }
    store_float_transposed(dk_t_.data.data(), dk_t_.ld, E_, p_.kv_len, static_cast<float>(p_.scale), bp_.grad_k, b,
                           kv_head);
    store_float_transposed(dv_t_.data.data(), dv_t_.ld, Ev_, p_.kv_len, 1.0f, bp_.grad_v, b, kv_head);
  }

 private:
  void query_tile(int64_t b, int64_t h, int64_t row0, int64_t rows) {
    q_ = row_operand<uint16_t>(p_.q, b, h, row0, rows, E_, q_copy_.data());
    dout_ = row_operand<uint16_t>(bp_.grad_out, b, h, row0, rows, Ev_, dout_copy_.data());
    transpose_rows(p_.q, b, h, row0, rows, E_, q_t_.data(), kQueryTile);
    transpose_rows(bp_.grad_out, b, h, row0, rows, Ev_, dout_t_.data(), kQueryTile);
    std::copy_n(static_cast<const float*>(p_.logsumexp) + p_.row_index(b, h, row0), rows, lse_.data());
    const KeyRange keys = visible_key_tiles(p_, row0, rows);

    // First sweep: the row statistics, P unnormalised.
    std::fill_n(prob_sum_.data(), rows, 0.0);
    std::fill_n(weighted_sum_.data(), rows, 0.0);
    std::fill_n(scale_.data(), rows, 1.0f);
    for (int64_t col0 = keys.first; col0 < keys.end; col0 += kKeyTile) {
      const TileCoord t{b, h, row0, rows, col0, std::min(kKeyTile, keys.end - col0)};
      float* probs = probs_of(col0);
      float* grads = grads_of(col0);
      probabilities_and_their_gradient(t, probs, grads);
      for (int64_t r = 0; r < rows; ++r) {
        add_row_sums(probs + r * kScoreLd, grads + r * kScoreLd, t.cols, prob_sum_[r], weighted_sum_[r]);
      }
    }
    finish_row_statistics(bp_, b, h, row0, rows, prob_sum_.data(), weighted_sum_.data(), scale_.data(),
                          delta_.data());

    // Second sweep: the gradients.
    std::fill_n(dq_.data(), rows * E_, 0.0f);
    for (int64_t col0 = keys.first; col0 < keys.end; col0 += kKeyTile) {
      const TileCoord t{b, h, row0, rows, col0, std::min(kKeyTile, keys.end - col0)};
      float* probs = probs_of(col0);
      float* grads = grads_of(col0);
      // A kept P is renormalised as dP becomes dS; a recomputed one already is.
      if (!keeps_all_) probabilities_and_their_gradient(t, probs, grads);
      for (int64_t r = 0; r < rows; ++r) {
        score_gradient(probs + r * kScoreLd, grads + r * kScoreLd, t.cols, delta_[r], keeps_all_ ? scale_[r] : 1.0f);
      }
      add_gradient_products(t, probs, grads);
    }
    store_tile<c10::BFloat16>(dq_.data(), E_, bp_.grad_q, b, h, row0, rows, E_, static_cast<float>(p_.scale));
  }

  // P = exp(scale·Q·Kᵀ − lse)·row_scale into probs and dP = dO·Vᵀ into grads.
  void probabilities_and_their_gradient(const TileCoord& t, float* probs, float* grads) {
    product_with_transposed(t.rows, t.cols, E_, q_.data, q_.ld, keys_t_.data(), p_.kv_len, t.col0, probs, kScoreLd);
    hide_invisible_keys(p_, t, probs, kScoreLd);
    probabilities_from_logsumexp(t, lse_.data(), scale_.data(), probs, kScoreLd, static_cast<float>(p_.scale));
    product_with_transposed(t.rows, t.cols, Ev_, dout_.data, dout_.ld, values_t_.data(), p_.kv_len, t.col0, grads,
                            kScoreLd);
  }

  // dQ += dS·K, dKᵀ += Qᵀ·dS and dVᵀ += dOᵀ·P for tile t, dS in grads.
  void add_gradient_products(const TileCoord& t, const float* probs, const float* grads) {
    const int64_t even_rows = t.rows + t.rows % 2;
    round_float_rows(grads, kScoreLd, t.rows, t.cols, ds_rows_.data(), kScoreLd);
    add_product_with_rows(t.rows, E_, t.cols, ds_rows_.data(), kScoreLd, keys_.data(), p_.kv_len, t.col0,
                          dq_.data(), E_);
    for (int64_t j = 0; j < t.cols; j += kPackedBlock) {
      const int64_t n = std::min(kPackedBlock, t.cols - j);
      uint16_t* ds = ds_pairs_.data() + even_rows * j;
      uint16_t* p = p_pairs_.data() + even_rows * j;
      pack_float_rows(grads + j, kScoreLd, t.rows, n, ds);
      pack_float_rows(probs + j, kScoreLd, t.rows, n, p);
      bf16_product(E_, n, t.rows, q_t_.data(), kQueryTile, ds, n, dk_t_.at(t.col0 + j), dk_t_.ld, true);
      bf16_product(Ev_, n, t.rows, dout_t_.data(), kQueryTile, p, n, dv_t_.at(t.col0 + j), dv_t_.ld, true);
    }
  }

  float* probs_of(int64_t col0) { return probs_.data() + (keeps_all_ ? col0 / kKeyTile * kQueryTile * kScoreLd : 0); }
  float* grads_of(int64_t col0) { return grads_.data() + (keeps_all_ ? col0 / kKeyTile * kQueryTile * kScoreLd : 0); }

  const AttentionBackwardParams& bp_;
  const AttentionParams& p_;
  const int64_t E_, Ev_;
  const bool keeps_all_;
  // The head's K packed both ways and V transposed (packed_head.h).
  Scratch<uint16_t> keys_t_, keys_, values_t_;
  // The tile of query rows: Q and dO (where copied), and both transposed.
  Scratch<uint16_t> q_copy_, dout_copy_, q_t_, dout_t_;
  RowOperand<uint16_t> q_{nullptr, 0}, dout_{nullptr, 0};
  // dS as rows, and dS and P packed, for the products of one key tile.
  Scratch<uint16_t> ds_rows_, ds_pairs_, p_pairs_;
  // P and dP (then dS), of every key tile when keeps_all_, else of one.
  Scratch<float> probs_, grads_;
  Scratch<float> dq_, lse_, scale_, delta_;
  Scratch<double> prob_sum_, weighted_sum_;
  TransposedRows dk_t_, dv_t_;
};

}  // namespace

bool matrix_unit_backward_applies(const AttentionBackwardParams& bp) {
  const AttentionParams& p = bp.fwd;
  return p.dtype == ElementType::BFloat16 && bp.grad_mask.data == nullptr && p.mask_kind == MaskKind::None &&
         !p.dropout.enabled() && !has_score_bias(p) && p.scale > 0 && !p.has_sequences() &&
         p.block_table == nullptr && p.head_dim > 0 && p.head_dim % 2 == 0 && p.value_dim > 0 &&
         p.value_dim % 2 == 0 && bf16_matrix_units_available();
}

void matrix_unit_backward(const AttentionBackwardParams& bp) {
  const AttentionParams& p = bp.fwd;
  parallel_tasks(
      p.batch * p.kv_heads, [&] { return HeadBackward(bp); },
      [&](HeadBackward& head, int64_t task) { head.run(task / p.kv_heads, task % p.kv_heads); });
}

}  // namespace selfattn::cpu
