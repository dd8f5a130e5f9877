// The forward for a few query rows against many keys, as in decoding with a
// KV cache. Tiles of query rows then make too few tasks to use every core,
// so each (sequence, head) splits its keys into chunks of whole key tiles,
// one task each; the partial outputs merge by their logsumexp.
#pragma once

#include <ATen/Parallel.h>

#include "cpu/forward_products.h"
#include "cpu/online_softmax.h"
#include "common/sequence_problem.h"

namespace selfattn::cpu {

// Into how many chunks of whole key tiles each of `tasks` tasks splits its
// keys: 1 (no split) unless the tasks alone give fewer than two per thread.
inline int64_t key_chunks(const AttentionParams& p, int64_t tasks) {
  const int64_t wanted = 2 * static_cast<int64_t>(at::get_num_threads());
  if (tasks == 0 || tasks >= wanted) return 1;
  return std::max<int64_t>(1, std::min(ceil_div(p.max_seqlen_k, kKeyTile), ceil_div(wanted, tasks)));
}

// Chunk `chunk` of `chunks` of the keys: whole key tiles, the last shorter
// (or empty).
inline KeyRange key_chunk(const KeyRange& keys, int64_t chunks, int64_t chunk) {
  const int64_t tiles_per_chunk = ceil_div(ceil_div(keys.end - keys.first, kKeyTile), chunks);
  const int64_t first = keys.first + chunk * tiles_per_chunk * kKeyTile;
  return KeyRange{first, std::min(keys.end, first + tiles_per_chunk * kKeyTile)};
}

// Into how many chunks each (sequence, head) splits its keys: 1 (no split)
// unless every sequence fits one tile of query rows and the heads alone give
// fewer than two tasks per thread.
inline int64_t split_key_chunks(const AttentionParams& p) {
  if (p.max_seqlen_q > kQueryTile) return 1;
  return key_chunks(p, p.sequences * p.q_heads);
}

inline bool use_split_keys(const AttentionParams& p) { return split_key_chunks(p) > 1; }

// Partial results of every (sequence, head, chunk): the unnormalised output
// rows with their running max and sum, as online_softmax_step leaves them.
template <typename acc_t>
struct KeyChunkResults {
  int64_t rows, value_dim;
  Scratch<acc_t> out, row_max, row_sum;

  KeyChunkResults(int64_t slots, int64_t rows, int64_t value_dim)
      : rows(rows), value_dim(value_dim), out(slots * rows * value_dim), row_max(slots * rows), row_sum(slots * rows) {}

  void save(int64_t slot, const ForwardWorkspace<acc_t>& ws) {
    std::copy_n(ws.out.data(), rows * value_dim, out.data() + slot * rows * value_dim);
    std::copy_n(ws.row_max.data(), rows, row_max.data() + slot * rows);
    std::copy_n(ws.row_sum.data(), rows, row_sum.data() + slot * rows);
  }

  // Folds the chunks [slot0, slot0 + chunks) into ws, as if one task had
  // streamed all their keys.
  void merge(int64_t slot0, int64_t chunks, ForwardWorkspace<acc_t>& ws) const {
    for (int64_t r = 0; r < rows; ++r) {
      acc_t m = minus_infinity<acc_t>();
      for (int64_t c = 0; c < chunks; ++c) m = nan_propagating_max(m, row_max.data()[(slot0 + c) * rows + r]);
      acc_t* o = ws.out.data() + r * value_dim;
      std::fill(o, o + value_dim, acc_t(0));
      acc_t sum = 0;
      for (int64_t c = 0; c < chunks && m != minus_infinity<acc_t>(); ++c) {
        const int64_t at = (slot0 + c) * rows + r;
        if (row_max.data()[at] == minus_infinity<acc_t>()) continue;  // this chunk saw no key of the row
        const acc_t weight = std::exp(row_max.data()[at] - m);
        sum += row_sum.data()[at] * weight;
        const acc_t* part = out.data() + at * value_dim;
        for (int64_t e = 0; e < value_dim; ++e) o[e] += part[e] * weight;
      }
      ws.row_max.data()[r] = m;
      ws.row_sum.data()[r] = sum;
    }
  }
};

// Calls fn(problem, b): for a call with sequences, sequence s's own problem
// with its batch index 0, else the call itself with batch s.
template <typename Fn>
void with_sequence(const AttentionParams& p, int64_t s, Fn&& fn) {
  if (p.has_sequences()) return fn(sequence_problem(p, s), int64_t(0));
  fn(p, s);
}

template <typename scalar_t, typename acc_t>
void forward_split_keys(const AttentionParams& p) {
  using Products = FloatProducts<scalar_t, acc_t>;  // each task reads its keys once: nothing to pack
  const int64_t chunks = split_key_chunks(p);
  KeyChunkResults<acc_t> results(p.sequences * p.q_heads * chunks, p.max_seqlen_q, p.value_dim);

  at::parallel_for(0, p.sequences * p.q_heads * chunks, 1, [&](int64_t begin, int64_t end) {
    ForwardWorkspace<acc_t> ws(p);
    for (int64_t slot = begin; slot < end; ++slot) {
      const int64_t s = slot / (p.q_heads * chunks), h = (slot / chunks) % p.q_heads, chunk = slot % chunks;
      with_sequence(p, s, [&](const AttentionParams& problem, int64_t b) {
        if (problem.q_len == 0) return;
        Products products(problem);
        products.begin_query_tile(b, h, 0, problem.q_len);
        start_query_tile(problem.q_len, ws);
        accumulate_keys(problem, b, h, 0, problem.q_len,
                        key_chunk(visible_key_tiles(problem, 0, problem.q_len), chunks, chunk), products, ws);
        results.save(slot, ws);
      });
    }
  });

  at::parallel_for(0, p.sequences * p.q_heads, 1, [&](int64_t begin, int64_t end) {
    ForwardWorkspace<acc_t> ws(p);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / p.q_heads, h = task % p.q_heads;
      with_sequence(p, s, [&](const AttentionParams& problem, int64_t b) {
        if (problem.q_len == 0) return;
        results.merge(task * chunks, chunks, ws);
        finish_query_tile<scalar_t>(problem, b, h, 0, problem.q_len, ws);
      });
    }
  });
}

}  // namespace selfattn::cpu
