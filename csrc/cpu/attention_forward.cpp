// FlashAttention forward on the CPU: each task takes one tile of query rows of
// one head and streams the key/value tiles past it, keeping a running row max
// and row sum (the online softmax) so that no score matrix outlives its tile.
// Only the output and the per-row logsumexp are written.
#include <ATen/Parallel.h>

#include "cpu/dispatch_dtype.h"
#include "cpu/kernels.h"
#include "cpu/tile_ops.h"

namespace selfattn::cpu {
namespace {

template <typename acc_t>
struct ForwardWorkspace {
  int64_t head_dim, value_dim;
  Scratch<acc_t> q, k, v, scores, dropout, out, row_max, row_sum;

  explicit ForwardWorkspace(const AttentionParams& p)
      : head_dim(p.head_dim),
        value_dim(p.value_dim),
        q(kQueryTile * p.head_dim),
        k(kKeyTile * p.head_dim),
        v(kKeyTile * p.value_dim),
        scores(kQueryTile * kKeyTile),
        dropout(p.dropout.enabled() ? kQueryTile * kKeyTile : 0),
        out(kQueryTile * p.value_dim),
        row_max(kQueryTile),
        row_sum(kQueryTile) {}
};

// max that lets a NaN through, so that a NaN score poisons its row as it
// does in PyTorch instead of being skipped.
template <typename acc_t>
acc_t nan_propagating_max(acc_t a, acc_t b) {
  return (b > a || b != b) ? b : a;
}

// One step of the online softmax: folds a tile of scores into the running
// max and sum of each row, rescales the output accumulated so far, and turns
// the scores into unnormalised probabilities exp(s - max).
template <typename acc_t>
void online_softmax_step(const TileCoord& t, acc_t* scores, int64_t ld, ForwardWorkspace<acc_t>& ws) {
  for (int64_t r = 0; r < t.rows; ++r) {
    acc_t* s = scores + r * ld;
    acc_t tile_max = minus_infinity<acc_t>();
    for (int64_t c = 0; c < t.cols; ++c) tile_max = nan_propagating_max(tile_max, s[c]);
    const acc_t old_max = ws.row_max.data()[r];
    const acc_t new_max = nan_propagating_max(old_max, tile_max);
    if (new_max == minus_infinity<acc_t>()) {  // everything so far is masked out
      std::fill(s, s + t.cols, acc_t(0));
      continue;
    }
    acc_t tile_sum = 0;
#pragma omp simd reduction(+ : tile_sum)
    for (int64_t c = 0; c < t.cols; ++c) {
      s[c] = vector_exp(s[c] - new_max);
      tile_sum += s[c];
    }
    const acc_t rescale = std::exp(old_max - new_max);
    acc_t* out = ws.out.data() + r * ws.value_dim;
    for (int64_t e = 0; e < ws.value_dim; ++e) out[e] *= rescale;
    ws.row_sum.data()[r] = ws.row_sum.data()[r] * rescale + tile_sum;
    ws.row_max.data()[r] = new_max;
  }
}

template <typename scalar_t, typename acc_t>
void forward_query_tile(const AttentionParams& p, int64_t b, int64_t h, int64_t row0, ForwardWorkspace<acc_t>& ws) {
  const int64_t rows = std::min(kQueryTile, p.q_len - row0);
  const int64_t kv_head = h / p.group_size();
  const int64_t E = p.head_dim, Ev = p.value_dim;

  load_tile<scalar_t>(p.q, b, h, row0, rows, E, ws.q.data(), E, static_cast<acc_t>(p.scale));
  fill_tile(ws.out.data(), Ev, rows, Ev, acc_t(0));
  std::fill(ws.row_max.data(), ws.row_max.data() + rows, minus_infinity<acc_t>());
  std::fill(ws.row_sum.data(), ws.row_sum.data() + rows, acc_t(0));

  const int64_t visible = visible_key_columns(p, row0, rows);
  for (int64_t col0 = 0; col0 < visible; col0 += kKeyTile) {
    const TileCoord t{b, h, row0, rows, col0, std::min(kKeyTile, visible - col0)};
    load_tile<scalar_t>(p.k, b, kv_head, col0, t.cols, E, ws.k.data(), E);
    load_tile<scalar_t>(p.v, b, kv_head, col0, t.cols, Ev, ws.v.data(), Ev);

    acc_t* s = ws.scores.data();
    compute_scores(p, t, ws.q.data(), E, ws.k.data(), E, s, kKeyTile);
    online_softmax_step(t, s, kKeyTile, ws);
    // Dropout acts on the probabilities that multiply V, after the row sum
    // has taken them in: the softmax itself is never dropped.
    if (p.dropout.enabled()) {
      dropout_multipliers(p, t, ws.dropout.data(), kKeyTile);
      multiply_tile(s, ws.dropout.data(), kKeyTile, rows, t.cols);
    }
    gemm_ab(rows, Ev, t.cols, s, kKeyTile, ws.v.data(), Ev, ws.out.data(), Ev);
  }

  auto* lse = static_cast<acc_t*>(p.logsumexp) + (b * p.q_heads + h) * p.q_len + row0;
  for (int64_t r = 0; r < rows; ++r) {
    const acc_t row_max = ws.row_max.data()[r];
    acc_t* out = ws.out.data() + r * Ev;
    if (row_max == minus_infinity<acc_t>()) {  // a fully masked row gives 0, as PyTorch's safe softmax
      std::fill(out, out + Ev, acc_t(0));
      lse[r] = minus_infinity<acc_t>();
      continue;
    }
    const acc_t row_sum = ws.row_sum.data()[r];
    for (int64_t e = 0; e < Ev; ++e) out[e] /= row_sum;
    lse[r] = row_max + std::log(row_sum);
  }
  store_tile<scalar_t>(ws.out.data(), Ev, p.out, b, h, row0, rows, Ev);
}

template <typename scalar_t, typename acc_t>
struct ForwardKernel {
  static void run(const AttentionParams& p) {
    const int64_t q_tiles = (p.q_len + kQueryTile - 1) / kQueryTile;
    at::parallel_for(0, p.batch * p.q_heads * q_tiles, 1, [&](int64_t begin, int64_t end) {
      ForwardWorkspace<acc_t> ws(p);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t head = task / q_tiles;
        forward_query_tile<scalar_t>(p, head / p.q_heads, head % p.q_heads, (task % q_tiles) * kQueryTile, ws);
      }
    });
  }
};

}  // namespace

void attention_forward(const AttentionParams& params) { dispatch_dtype<ForwardKernel>(params, params.dtype); }

}  // namespace selfattn::cpu
