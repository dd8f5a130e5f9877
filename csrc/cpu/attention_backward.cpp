// FlashAttention backward on the CPU. The probabilities are recomputed tile
// by tile from the forward's logsumexp, and dS = P ∘ (dP − D) with
// D = rowsum(P ∘ dP) = rowsum(dO ∘ O). The work is split in two passes so that
// every output element has exactly one writer, which keeps the result
// deterministic and needs neither atomics nor per-thread copies of the
// gradients:
//   - the query pass owns tiles of query rows: it computes their row
//     statistics (D and the normaliser of P) and writes dQ (and dMask);
//   - the key pass owns tiles of key columns and writes dK and dV, summing
//     over the query heads that share the key/value head (GQA).
#include <ATen/Parallel.h>

#include "cpu/backward_rows.h"
#include "cpu/dispatch_dtype.h"
#include "cpu/matrix_unit_backward.h"
#include "cpu/parallel_tasks.h"
#include "common/env_flags.h"
#include "cpu/kernels.h"
#include "common/sequence_problem.h"
#include "cpu/tile_ops.h"

namespace selfattn::cpu {
namespace {

template <typename acc_t>
struct BackwardWorkspace {
  Scratch<acc_t> q, grad_out, k, v, probs, grad_scores, dropout, dropped_probs, score_slopes, grad_acc, grad_acc2, lse,
      row_scale, delta;
  // The sums behind the row statistics, in double whatever acc_t is.
  Scratch<double> prob_sum, weighted_sum;
  // The rows of Q, dO, K and V that the products read: the tensors' own
  // memory where BLAS can read it (row_operand), else the copies above, so
  // that float inputs are not copied (1.5 MiB per tile of query rows at
  // S = 2048, E = 64), and the scores are the forward's products of the
  // same rows.
  RowOperand<acc_t> q_rows{nullptr, 0}, grad_out_rows{nullptr, 0}, k_rows{nullptr, 0}, v_rows{nullptr, 0};

  explicit BackwardWorkspace(const AttentionParams& p)
      : q(kQueryTile * p.head_dim),
        grad_out(kQueryTile * p.value_dim),
        k(kKeyTile * p.head_dim),
        v(kKeyTile * p.value_dim),
        probs(kQueryTile * kScoreLd),
        grad_scores(kQueryTile * kScoreLd),
        dropout(p.dropout.enabled() ? kQueryTile * kScoreLd : 0),
        dropped_probs(p.dropout.enabled() ? kQueryTile * kScoreLd : 0),
        score_slopes(p.softcap > 0.0 ? kQueryTile * kScoreLd : 0),
        grad_acc(std::max(kQueryTile, kKeyTile) * std::max(p.head_dim, p.value_dim)),
        grad_acc2(kKeyTile * p.value_dim),
        lse(kQueryTile),
        row_scale(kQueryTile),
        delta(kQueryTile),
        prob_sum(kQueryTile),
        weighted_sum(kQueryTile) {}

  // Where compute_scores leaves the softcap's derivative, when there is one.
  acc_t* slopes() { return score_slopes.size() > 0 ? score_slopes.data() : nullptr; }
};

// Loads what a tile of query rows brings to the backward: Q, dO and the
// per-row logsumexp.
template <typename scalar_t, typename acc_t>
void load_query_side(const AttentionBackwardParams& bp, int64_t b, int64_t h, int64_t row0, int64_t rows,
                     BackwardWorkspace<acc_t>& ws) {
  const AttentionParams& p = bp.fwd;
  ws.q_rows = row_operand<scalar_t>(p.q, b, h, row0, rows, p.head_dim, ws.q.data());
  ws.grad_out_rows = row_operand<scalar_t>(bp.grad_out, b, h, row0, rows, p.value_dim, ws.grad_out.data());
  std::copy_n(static_cast<const acc_t*>(p.logsumexp) + p.row_index(b, h, row0), rows, ws.lse.data());
}

template <typename scalar_t, typename acc_t>
void load_key_side(const AttentionParams& p, int64_t b, int64_t kv_head, int64_t col0, int64_t cols,
                   BackwardWorkspace<acc_t>& ws) {
  ws.k_rows = row_operand<scalar_t>(p.k, b, kv_head, col0, cols, p.head_dim, ws.k.data());
  ws.v_rows = row_operand<scalar_t>(p.v, b, kv_head, col0, cols, p.value_dim, ws.v.data());
}

// With the query side and the key side of tile t loaded, recomputes the
// probabilities P (before dropout) into `probs` and their gradient
// dP = Z ∘ dO·Vᵀ into `grad_probs` (leading dimension kScoreLd), Z being
// the dropout multipliers (left in ws.dropout).
template <typename acc_t>
void probabilities_and_their_gradient(const AttentionParams& p, const TileCoord& t, BackwardWorkspace<acc_t>& ws,
                                      acc_t* probs, acc_t* grad_probs) {
  compute_scores(p, t, ws.q_rows.data, ws.q_rows.ld, ws.k_rows.data, ws.k_rows.ld, probs, kScoreLd, ws.slopes());
  probabilities_from_logsumexp(t, ws.lse.data(), ws.row_scale.data(), probs, kScoreLd);
  gemm_abt(t.rows, t.cols, p.value_dim, ws.grad_out_rows.data, ws.grad_out_rows.ld, ws.v_rows.data, ws.v_rows.ld,
           grad_probs, kScoreLd, acc_t(1), acc_t(0));
  if (p.dropout.enabled()) {
    dropout_multipliers(p, t, ws.dropout.data(), kScoreLd);
    multiply_tile(grad_probs, ws.dropout.data(), kScoreLd, t.rows, t.cols);
  }
}

// dP → dS = P ∘ (dP − D) in place, row by row, with D in ws.delta. A kept P
// (see TileStore) is renormalised by ws.row_scale in the same pass.
template <typename acc_t>
void to_score_gradient(const TileCoord& t, acc_t* probs, acc_t* grad, const BackwardWorkspace<acc_t>& ws,
                       bool renormalise = false) {
  for (int64_t r = 0; r < t.rows; ++r) {
    score_gradient(probs + r * kScoreLd, grad + r * kScoreLd, t.cols, ws.delta.data()[r],
                   renormalise ? ws.row_scale.data()[r] : acc_t(1));
  }
}

// dS is the gradient of the scores the softmax saw; the products with Q and
// K need that of the scaled scores before softcapping: dS ∘ (1 − tanh²). The
// mask's gradient is taken before this, as the mask is added after the cap.
template <typename acc_t>
void through_softcap(const TileCoord& t, acc_t* grad, BackwardWorkspace<acc_t>& ws) {
  if (ws.slopes() != nullptr) multiply_tile(grad, ws.slopes(), kScoreLd, t.rows, t.cols);
}

// The score gradient dS = P ∘ (dP − D) of tile t into ws.grad_scores, with P
// left in ws.probs. Needs the row statistics in ws.row_scale and ws.delta.
template <typename acc_t>
void score_gradients(const AttentionParams& p, const TileCoord& t, BackwardWorkspace<acc_t>& ws) {
  probabilities_and_their_gradient(p, t, ws, ws.probs.data(), ws.grad_scores.data());
  to_score_gradient(t, ws.probs.data(), ws.grad_scores.data(), ws);
}

// Where the first sweep over the keys of a tile of query rows leaves P and dP
// of each key tile: in slots of their own when all of them fit the budget,
// so that the second sweep reuses them instead of recomputing both
// products, or else all in the workspace's single tile.
template <typename acc_t>
struct TileStore {
  acc_t* probs;
  acc_t* grads;
  bool keeps_all;

  acc_t* probs_of(int64_t key_tile) const { return probs + (keeps_all ? key_tile * kQueryTile * kScoreLd : 0); }
  acc_t* grads_of(int64_t key_tile) const { return grads + (keeps_all ? key_tile * kQueryTile * kScoreLd : 0); }
};

// The row statistics of the loaded tile of query rows, into the workspace
// and into bp (for the key pass):
//   - row_scale = 1 / rowsum(exp(S − lse)). The logsumexp is a float32 (or
//     float64) number as large as the scores, so exp(S − lse) sums to 1 only
//     up to the rounding of lse times |lse|; the renormalised P sums to 1 up
//     to the accumulator's rounding, as the softmax of PyTorch's math path.
//   - D = rowsum(P ∘ dP). It equals rowsum(dO ∘ O), but taken from the very P
//     and dP that dS is made of, each row of dS sums to 0 up to the
//     accumulator's rounding rather than the stored output's.
// Both sums are taken in double: with float, their own rounding would show
// in dQ wherever dS cancels (uniform attention, for one).
// Together they make a single key give dQ = 0 exactly, and a mask broadcast
// over the keys its true gradient, 0, in every dtype and at any scale.
// The sweep leaves P (unnormalised: row_scale is 1 while it runs) and dP of
// each key tile where `store` says.
template <typename scalar_t, typename acc_t>
void row_statistics(const AttentionBackwardParams& bp, int64_t b, int64_t h, int64_t row0, int64_t rows,
                    BackwardWorkspace<acc_t>& ws, const TileStore<acc_t>& store) {
  const AttentionParams& p = bp.fwd;
  acc_t* scale = ws.row_scale.data();
  acc_t* delta = ws.delta.data();
  double* prob_sum = ws.prob_sum.data();
  double* weighted_sum = ws.weighted_sum.data();
  std::fill(scale, scale + rows, acc_t(1));
  std::fill(prob_sum, prob_sum + rows, 0.0);
  std::fill(weighted_sum, weighted_sum + rows, 0.0);
  const KeyRange keys = visible_key_tiles(p, row0, rows);
  for (int64_t col0 = keys.first; col0 < keys.end; col0 += kKeyTile) {
    const TileCoord t{b, h, row0, rows, col0, std::min(kKeyTile, keys.end - col0)};
    acc_t* probs = store.probs_of(col0 / kKeyTile);
    acc_t* grads = store.grads_of(col0 / kKeyTile);
    load_key_side<scalar_t>(p, b, h / p.group_size(), col0, t.cols, ws);
    probabilities_and_their_gradient(p, t, ws, probs, grads);
    for (int64_t r = 0; r < rows; ++r) {
      add_row_sums(probs + r * kScoreLd, grads + r * kScoreLd, t.cols, prob_sum[r], weighted_sum[r]);
    }
  }
  finish_row_statistics(bp, b, h, row0, rows, prob_sum, weighted_sum, scale, delta);
}

// Reads back what row_statistics stored for a tile of query rows.
template <typename acc_t>
void load_row_statistics(const AttentionBackwardParams& bp, int64_t b, int64_t h, int64_t row0, int64_t rows,
                         BackwardWorkspace<acc_t>& ws) {
  const int64_t first = bp.fwd.row_index(b, h, row0);
  std::copy_n(static_cast<const acc_t*>(bp.row_scale) + first, rows, ws.row_scale.data());
  std::copy_n(static_cast<const acc_t*>(bp.delta) + first, rows, ws.delta.data());
}

// Adds the score gradient of tile t into the gradient of a mask that has
// mask_rows × mask_cols elements per (batch, head). A mask broadcast over the
// keys sums each row of the tile first: those row sums nearly cancel, so they
// are added as small numbers instead of one element at a time.
template <typename acc_t>
void add_to_mask_gradient(const AttentionParams& p, const TileCoord& t, const acc_t* ds, acc_t* grad_mask) {
  for (int64_t r = 0; r < t.rows; ++r) {
    acc_t* gm = grad_mask + (p.mask_rows == 1 ? 0 : r) * p.mask_cols;
    const acc_t* ds_row = ds + r * kScoreLd;
    if (p.mask_cols == 1) {
      acc_t row_sum = 0;
      for (int64_t c = 0; c < t.cols; ++c) row_sum += ds_row[c];
      gm[0] += row_sum;
    } else {
      for (int64_t c = 0; c < t.cols; ++c) gm[t.col0 + c] += ds_row[c];
    }
  }
}

// The query pass. A task owns a block of the mask gradient: where the mask
// broadcasts over batch, heads or rows, the task walks every (b, h, row tile)
// that the block sums over, so no two tasks write the same element.
template <typename scalar_t, typename acc_t>
void query_pass(const AttentionBackwardParams& bp) {
  const AttentionParams& p = bp.fwd;
  const bool mask_grad = bp.grad_mask.data != nullptr;
  const int64_t tile_rows = query_tile_rows(p), q_tiles = ceil_div(p.q_len, tile_rows);
  const int64_t task_batches = mask_grad ? p.mask_batch : p.batch;
  const int64_t task_heads = mask_grad ? p.mask_heads : p.q_heads;
  const int64_t task_tiles = mask_grad && p.mask_rows == 1 ? 1 : q_tiles;
  const int64_t mask_tile_rows = p.mask_rows == 1 ? 1 : tile_rows;

  at::parallel_for(0, task_batches * task_heads * task_tiles, 1, [&](int64_t begin, int64_t end) {
    BackwardWorkspace<acc_t> ws(p);
    Scratch<acc_t> grad_mask(mask_grad ? mask_tile_rows * p.mask_cols : 0);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t tb = task / (task_heads * task_tiles), th = (task / task_tiles) % task_heads;
      const int64_t tt = task % task_tiles;
      // The ranges this task sums over: one index where it does not broadcast.
      const int64_t b_begin = task_batches == p.batch ? tb : 0, b_end = task_batches == p.batch ? tb + 1 : p.batch;
      const int64_t h_begin = task_heads == p.q_heads ? th : 0, h_end = task_heads == p.q_heads ? th + 1 : p.q_heads;
      const int64_t t_begin = task_tiles == q_tiles ? tt : 0, t_end = task_tiles == q_tiles ? tt + 1 : q_tiles;
      std::fill_n(grad_mask.data(), grad_mask.size(), acc_t(0));

      for (int64_t b = b_begin; b < b_end; ++b) {
        for (int64_t h = h_begin; h < h_end; ++h) {
          for (int64_t tile = t_begin; tile < t_end; ++tile) {
            const int64_t row0 = tile * tile_rows, rows = std::min(tile_rows, p.q_len - row0);
            const int64_t kv_head = h / p.group_size();
            acc_t* dq = ws.grad_acc.data();
            load_query_side<scalar_t>(bp, b, h, row0, rows, ws);
            row_statistics<scalar_t>(bp, b, h, row0, rows, ws,
                                     TileStore<acc_t>{ws.probs.data(), ws.grad_scores.data(), false});
            fill_tile(dq, p.head_dim, rows, p.head_dim, acc_t(0));
            const KeyRange keys = visible_key_tiles(p, row0, rows);
            for (int64_t col0 = keys.first; col0 < keys.end; col0 += kKeyTile) {
              const TileCoord t{b, h, row0, rows, col0, std::min(kKeyTile, keys.end - col0)};
              load_key_side<scalar_t>(p, b, kv_head, col0, t.cols, ws);
              score_gradients(p, t, ws);
              acc_t* ds = ws.grad_scores.data();
              if (mask_grad) add_to_mask_gradient(p, t, ds, grad_mask.data());
              through_softcap(t, ds, ws);
              gemm_ab(rows, p.head_dim, t.cols, ds, kScoreLd, ws.k_rows.data, ws.k_rows.ld, dq, p.head_dim);
            }
            // dQ = scale · dS·K
            store_tile<scalar_t>(dq, p.head_dim, bp.grad_q, b, h, row0, rows, p.head_dim,
                                 static_cast<acc_t>(p.scale));
          }
        }
      }
      if (mask_grad) {
        const int64_t row0 = p.mask_rows == 1 ? 0 : tt * tile_rows;
        const int64_t rows = p.mask_rows == 1 ? 1 : std::min(tile_rows, p.q_len - row0);
        store_tile_as(p.mask_dtype, grad_mask.data(), p.mask_cols, bp.grad_mask, tb, th, row0, rows, p.mask_cols);
      }
    }
  });
}

// The key pass: a task owns one tile of key columns of one key/value head
// and accumulates dK and dV over every query head of its group and every
// query row that sees the tile.
template <typename scalar_t, typename acc_t>
void key_pass(const AttentionBackwardParams& bp) {
  const AttentionParams& p = bp.fwd;
  const int64_t k_tiles = ceil_div(p.kv_len, kKeyTile), tile_rows = query_tile_rows(p);
  at::parallel_for(0, p.batch * p.kv_heads * k_tiles, 1, [&](int64_t begin, int64_t end) {
    BackwardWorkspace<acc_t> ws(p);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (p.kv_heads * k_tiles), kv_head = (task / k_tiles) % p.kv_heads;
      const int64_t col0 = (task % k_tiles) * kKeyTile, cols = std::min(kKeyTile, p.kv_len - col0);
      acc_t* dk = ws.grad_acc.data();
      acc_t* dv = ws.grad_acc2.data();
      load_key_side<scalar_t>(p, b, kv_head, col0, cols, ws);
      fill_tile(dk, p.head_dim, cols, p.head_dim, acc_t(0));
      fill_tile(dv, p.value_dim, cols, p.value_dim, acc_t(0));

      const KeyRange seeing = query_rows_seeing(p, col0, cols);
      for (int64_t h = kv_head * p.group_size(); h < (kv_head + 1) * p.group_size(); ++h) {
        for (int64_t row0 = seeing.first; row0 < seeing.end; row0 += tile_rows) {
          const int64_t rows = std::min(tile_rows, p.q_len - row0);
          // Only the columns these rows see, so that the score tile has the
          // extent it has in the forward and the query pass, and its scores
          // the same rounding: P = exp(S − lse) then matches the forward's
          // even where |S| is large.
          const int64_t seen = std::min(cols, visible_key_tiles(p, row0, rows).end - col0);
          if (seen <= 0) continue;
          const TileCoord t{b, h, row0, rows, col0, seen};
          load_query_side<scalar_t>(bp, b, h, row0, t.rows, ws);
          load_row_statistics(bp, b, h, row0, t.rows, ws);
          score_gradients(p, t, ws);
          through_softcap(t, ws.grad_scores.data(), ws);
          const acc_t* probs = ws.probs.data();
          if (p.dropout.enabled()) {  // dV takes the probabilities that multiplied V: the dropped ones
            acc_t* dropped = ws.dropped_probs.data();
            for (int64_t r = 0; r < t.rows; ++r) std::copy_n(probs + r * kScoreLd, t.cols, dropped + r * kScoreLd);
            multiply_tile(dropped, ws.dropout.data(), kScoreLd, t.rows, t.cols);
            probs = dropped;
          }
          gemm_atb(t.cols, p.value_dim, t.rows, probs, kScoreLd, ws.grad_out_rows.data, ws.grad_out_rows.ld, dv,
                   p.value_dim);
          gemm_atb(t.cols, p.head_dim, t.rows, ws.grad_scores.data(), kScoreLd, ws.q_rows.data, ws.q_rows.ld, dk,
                   p.head_dim, static_cast<acc_t>(p.scale));
        }
      }
      store_tile<scalar_t>(dk, p.head_dim, bp.grad_k, b, kv_head, col0, cols, p.head_dim);
      store_tile<scalar_t>(dv, p.value_dim, bp.grad_v, b, kv_head, col0, cols, p.value_dim);
    }
  });
}

// Whether dK and dV accumulate in the gradient tensors themselves: when
// these hold rows of the accumulator type with unit column stride. That saves
// a copy, and the S × (E + Ev) floats a thread would hold otherwise.
template <typename scalar_t, typename acc_t>
bool accumulates_in_place(const AttentionBackwardParams& bp) {
  return std::is_same_v<scalar_t, acc_t> && bp.grad_k.stride.col == 1 && bp.grad_v.stride.col == 1;
}

// The rows that dK (or dV) of key/value head (b, h) accumulate in: the
// gradient's own, or the scratch's (stored when the head is done).
template <typename acc_t>
struct GradientRows {
  acc_t* data;
  int64_t ld;
};

template <typename acc_t>
GradientRows<acc_t> gradient_rows(const TensorView& grad, int64_t b, int64_t h, Scratch<acc_t>& scratch,
                                  int64_t width) {
  if (scratch.size() > 0) return {scratch.data(), width};
  return {static_cast<acc_t*>(grad.data) + grad.stride.offset(b, h, 0, 0), grad.stride.row};
}

// Where head_pass keeps what a task needs beyond the workspace: the tile
// store (see TileStore) and, unless they accumulate in place, dK and dV of a
// whole key/value head.
template <typename acc_t>
struct HeadScratch {
  bool keeps_all;
  Scratch<acc_t> kept_probs, kept_grads, dk, dv;
  TileStore<acc_t> store;

  HeadScratch(const AttentionParams& p, int64_t kv_len, bool keeps_all, bool in_place, BackwardWorkspace<acc_t>& ws)
      : keeps_all(keeps_all),
        kept_probs(keeps_all ? ceil_div(kv_len, kKeyTile) * kQueryTile * kScoreLd : 0),
        kept_grads(keeps_all ? ceil_div(kv_len, kKeyTile) * kQueryTile * kScoreLd : 0),
        dk(in_place ? 0 : kv_len * p.head_dim),
        dv(in_place ? 0 : kv_len * p.value_dim),
        // Without room for every tile, the workspace's own tile serves.
        store(keeps_all ? TileStore<acc_t>{kept_probs.data(), kept_grads.data(), true}
                        : TileStore<acc_t>{ws.probs.data(), ws.grad_scores.data(), false}) {}
};

// What a thread of the head pass keeps from task to task.
template <typename acc_t>
struct HeadThread {
  BackwardWorkspace<acc_t> ws;
  HeadScratch<acc_t> hs;

  HeadThread(const AttentionParams& p, bool keeps_all, bool in_place)
      : ws(p), hs(p, p.max_seqlen_k, keeps_all, in_place, ws) {}
};

// dQ, dK and dV of key/value head (b, kv_head) and the query heads of its
// GQA group. Each tile of query rows sweeps the keys twice, first for its
// row statistics, then for the gradients. Tiles of tile_rows query rows, as
// the forward had them.
template <typename scalar_t, typename acc_t>
void backward_head(const AttentionBackwardParams& bp, int64_t b, int64_t kv_head, int64_t tile_rows,
                   BackwardWorkspace<acc_t>& ws, HeadScratch<acc_t>& hs) {
  const AttentionParams& p = bp.fwd;
  const int64_t E = p.head_dim, Ev = p.value_dim;
  const TileStore<acc_t>& store = hs.store;
  const GradientRows<acc_t> dk = gradient_rows(bp.grad_k, b, kv_head, hs.dk, E);
  const GradientRows<acc_t> dv = gradient_rows(bp.grad_v, b, kv_head, hs.dv, Ev);
  fill_tile(dk.data, dk.ld, p.kv_len, E, acc_t(0));
  fill_tile(dv.data, dv.ld, p.kv_len, Ev, acc_t(0));
  for (int64_t h = kv_head * p.group_size(); h < (kv_head + 1) * p.group_size(); ++h) {
    for (int64_t row0 = 0; row0 < p.q_len; row0 += tile_rows) {
      const int64_t rows = std::min(tile_rows, p.q_len - row0);
      acc_t* dq = ws.grad_acc.data();
      load_query_side<scalar_t>(bp, b, h, row0, rows, ws);
      row_statistics<scalar_t>(bp, b, h, row0, rows, ws, store);
      fill_tile(dq, E, rows, E, acc_t(0));
      const KeyRange keys = visible_key_tiles(p, row0, rows);
      for (int64_t col0 = keys.first; col0 < keys.end; col0 += kKeyTile) {
        const TileCoord t{b, h, row0, rows, col0, std::min(kKeyTile, keys.end - col0)};
        acc_t* tile_probs = store.probs_of(col0 / kKeyTile);
        acc_t* tile_grads = store.grads_of(col0 / kKeyTile);
        if (hs.keeps_all) {  // P and dP are kept: only K is needed again, for dQ
          ws.k_rows = row_operand<scalar_t>(p.k, b, kv_head, col0, t.cols, E, ws.k.data());
          if (p.dropout.enabled()) dropout_multipliers(p, t, ws.dropout.data(), kScoreLd);
        } else {
          load_key_side<scalar_t>(p, b, kv_head, col0, t.cols, ws);
          probabilities_and_their_gradient(p, t, ws, tile_probs, tile_grads);
        }
        to_score_gradient(t, tile_probs, tile_grads, ws, hs.keeps_all);
        through_softcap(t, tile_grads, ws);
        gemm_ab(rows, E, t.cols, tile_grads, kScoreLd, ws.k_rows.data, ws.k_rows.ld, dq, E);
        gemm_atb(t.cols, E, rows, tile_grads, kScoreLd, ws.q_rows.data, ws.q_rows.ld, dk.data + col0 * dk.ld, dk.ld,
                 static_cast<acc_t>(p.scale));
        // dV takes the probabilities that multiplied V: the dropped ones.
        if (p.dropout.enabled()) multiply_tile(tile_probs, ws.dropout.data(), kScoreLd, rows, t.cols);
        gemm_atb(t.cols, Ev, rows, tile_probs, kScoreLd, ws.grad_out_rows.data, ws.grad_out_rows.ld,
                 dv.data + col0 * dv.ld, dv.ld);
      }
      store_tile<scalar_t>(dq, E, bp.grad_q, b, h, row0, rows, E, static_cast<acc_t>(p.scale));
    }
  }
  if (hs.dk.size() > 0) store_tile<scalar_t>(hs.dk.data(), E, bp.grad_k, b, kv_head, 0, p.kv_len, E);
  if (hs.dv.size() > 0) store_tile<scalar_t>(hs.dv.data(), Ev, bp.grad_v, b, kv_head, 0, p.kv_len, Ev);
}

// The pass for calls without a mask gradient. A task owns one key/value head
// (of one sequence) with the query heads of its GQA group, so it alone
// writes their dQ, dK and dV: the key tiles need no pass of their own.
template <typename scalar_t, typename acc_t>
void head_pass(const AttentionBackwardParams& bp) {
  const AttentionParams& p = bp.fwd;
  const bool keeps_all = keeps_all_tiles<acc_t>(p, p.max_seqlen_k);
  // The tiles of the forward: of the whole call, also for each sequence.
  const int64_t tile_rows = query_tile_rows(p);
  const bool in_place = accumulates_in_place<scalar_t, acc_t>(bp);
  parallel_tasks(
      p.sequences * p.kv_heads, [&] { return HeadThread<acc_t>(p, keeps_all, in_place); },
      [&](HeadThread<acc_t>& thread, int64_t task) {
        const int64_t s = task / p.kv_heads, kv_head = task % p.kv_heads;
        if (p.has_sequences()) {
          backward_head<scalar_t>(sequence_problem(bp, s), 0, kv_head, tile_rows, thread.ws, thread.hs);
        } else {
          backward_head<scalar_t>(bp, s, kv_head, tile_rows, thread.ws, thread.hs);
        }
      });
}

template <typename scalar_t, typename acc_t>
struct BackwardKernel {
  static void run(const AttentionBackwardParams& bp) {
    if (matrix_unit_backward_applies(bp)) return matrix_unit_backward(bp);
    if (bp.grad_mask.data == nullptr) return head_pass<scalar_t, acc_t>(bp);
    query_pass<scalar_t, acc_t>(bp);
    key_pass<scalar_t, acc_t>(bp);
  }
};

}  // namespace

void attention_backward(const AttentionBackwardParams& params) {
  dispatch_cpu_dtype<BackwardKernel>(params, params.fwd.dtype);
}

}  // namespace selfattn::cpu
