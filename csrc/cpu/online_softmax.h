// The forward's work on one tile of query rows: a workspace, the online
// softmax that folds key tiles into a running output, max and sum, and the
// final normalisation. attention_forward.cpp drives it over whole calls;
// split_keys_forward.h over chunks of the keys.
#pragma once

#include "cpu/tile_ops.h"

namespace selfattn::cpu {

template <typename acc_t>
struct ForwardWorkspace {
  int64_t value_dim;
  Scratch<acc_t> scores, dropout, out, row_max, row_sum;

  explicit ForwardWorkspace(const AttentionParams& p)
      : value_dim(p.value_dim),
        scores(kQueryTile * kScoreLd),
        dropout(p.dropout.enabled() ? kQueryTile * kScoreLd : 0),
        out(kQueryTile * p.value_dim),
        row_max(kQueryTile),
        row_sum(kQueryTile) {}
};

// One step of the online softmax: folds a tile of scores into the running
// max and sum of each row, rescales the output accumulated so far, and turns
// the scores into unnormalised probabilities exp(s - max). The scores are
// score_scale·(what `scores` holds) (score_scale > 0). exp_row(r, s, max)
// writes row r's probabilities and returns their sum; zero_row(r) writes
// zeros, for a row that everything so far masks out.
template <typename acc_t, typename ExpRow, typename ZeroRow>
void online_softmax_step(const TileCoord& t, const acc_t* scores, int64_t ld, acc_t score_scale,
                         ForwardWorkspace<acc_t>& ws, ExpRow exp_row, ZeroRow zero_row) {
  for (int64_t r = 0; r < t.rows; ++r) {
    const acc_t* s = scores + r * ld;
    const acc_t old_max = ws.row_max.data()[r];
    const acc_t new_max = nan_propagating_max(old_max, score_scale * max_element(s, t.cols));
    if (new_max == minus_infinity<acc_t>()) {
      zero_row(r);
      continue;
    }
    const acc_t tile_sum = exp_row(r, s, new_max);
    const acc_t rescale = std::exp(old_max - new_max);
    scale(ws.out.data() + r * ws.value_dim, ws.value_dim, rescale);
    ws.row_sum.data()[r] = ws.row_sum.data()[r] * rescale + tile_sum;
    ws.row_max.data()[r] = new_max;
  }
}

// The step on scores as they are, leaving the probabilities in their place.
template <typename acc_t>
void online_softmax_step(const TileCoord& t, acc_t* scores, int64_t ld, ForwardWorkspace<acc_t>& ws) {
  online_softmax_step(
      t, scores, ld, acc_t(1), ws,
      [&](int64_t r, const acc_t*, acc_t max) { return exp_shifted(scores + r * ld, t.cols, max, acc_t(1)); },
      [&](int64_t r) { std::fill(scores + r * ld, scores + r * ld + t.cols, acc_t(0)); });
}

// Divides each row of the output by its sum and writes it with its
// logsumexp. A fully masked row gives 0, as PyTorch's safe softmax. The
// tile's rows start at row ws_row0 of the workspace.
template <typename scalar_t, typename acc_t>
void finish_query_tile(const AttentionParams& p, int64_t b, int64_t h, int64_t row0, int64_t rows,
                       ForwardWorkspace<acc_t>& ws, int64_t ws_row0 = 0) {
  const int64_t Ev = p.value_dim;
  auto* lse = static_cast<acc_t*>(p.logsumexp) + p.row_index(b, h, row0);
  for (int64_t r = 0; r < rows; ++r) {
    const acc_t row_max = ws.row_max.data()[ws_row0 + r];
    acc_t* out = ws.out.data() + (ws_row0 + r) * Ev;
    if (row_max == minus_infinity<acc_t>()) {
      std::fill(out, out + Ev, acc_t(0));
      lse[r] = minus_infinity<acc_t>();
      continue;
    }
    const acc_t row_sum = ws.row_sum.data()[ws_row0 + r];
    scale(out, Ev, acc_t(1) / row_sum);
    lse[r] = row_max + std::log(row_sum);
  }
  store_tile<scalar_t>(ws.out.data() + ws_row0 * Ev, Ev, p.out, b, h, row0, rows, Ev);
}

template <typename acc_t>
void start_query_tile(int64_t rows, ForwardWorkspace<acc_t>& ws) {
  fill_tile(ws.out.data(), ws.value_dim, rows, ws.value_dim, acc_t(0));
  std::fill(ws.row_max.data(), ws.row_max.data() + rows, minus_infinity<acc_t>());
  std::fill(ws.row_sum.data(), ws.row_sum.data() + rows, acc_t(0));
}

// Streams the key tiles of [keys.first, keys.end) past the begun tile of
// query rows, folding them into the running output, max and sum.
template <typename acc_t, typename Products>
void accumulate_keys(const AttentionParams& p, int64_t b, int64_t h, int64_t row0, int64_t rows, KeyRange keys,
                     Products& products, ForwardWorkspace<acc_t>& ws) {
  for (int64_t col0 = keys.first; col0 < keys.end; col0 += kKeyTile) {
    const TileCoord t{b, h, row0, rows, col0, std::min(kKeyTile, keys.end - col0)};
    acc_t* s = ws.scores.data();
    if constexpr (Products::kFusedSoftmax) {
      if (products.fuses_softmax()) {  // the products run the whole step
        products.fused_step(t, s, kScoreLd, ws);
        continue;
      }
    }
    products.scores(t, s, kScoreLd);
    apply_score_rules(p, t, s, kScoreLd);
    online_softmax_step(t, s, kScoreLd, ws);
    // Dropout acts on the probabilities that multiply V, after the row sum
    // has taken them in: the softmax itself is never dropped.
    if (p.dropout.enabled()) {
      dropout_multipliers(p, t, ws.dropout.data(), kScoreLd);
      multiply_tile(s, ws.dropout.data(), kScoreLd, rows, t.cols);
    }
    products.add_probs_times_values(t, s, kScoreLd, ws.out.data(), p.value_dim);
  }
}

template <typename scalar_t, typename acc_t, typename Products>
void forward_query_tile(const AttentionParams& p, int64_t b, int64_t h, int64_t row0, int64_t rows,
                        Products& products, ForwardWorkspace<acc_t>& ws) {
  products.begin_head(b, h / p.group_size());
  products.begin_query_tile(b, h, row0, rows);
  start_query_tile(rows, ws);
  accumulate_keys(p, b, h, row0, rows, visible_key_tiles(p, row0, rows), products, ws);
  finish_query_tile<scalar_t>(p, b, h, row0, rows, ws);
}

}  // namespace selfattn::cpu
