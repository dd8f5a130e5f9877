// The forward of a decoding step on a paged cache (or on any token-major
// one, packed varlen batches included), when no score rule tells one query
// row from another: all query rows of all heads of a sequence make one
// tile, and the cache is taken 16 key rows at a time, head after head. A key
// row of a block holds every head's key side by side, so one head at a time
// over all blocks (the tile loop) would read 512-byte pieces 4 KiB apart;
// here each piece of 16 rows is read once, front to back. The keys split
// into chunks across the cores, and the chunks merge by their logsumexp, as
// in split_keys_forward.h.
#pragma once

#include <ATen/Parallel.h>

#include "common/score_rules.h"
#include "cpu/key_runs.h"
#include "cpu/split_keys_forward.h"

namespace selfattn::cpu {

// Keys (and values) whose rows hold every head side by side: the layout of
// a paged cache's blocks, and of FlashAttention's (batch, S, H, E) caches.
inline bool token_major(const AttentionParams& p) {
  return p.block_table != nullptr || (p.k.stride.head < p.k.stride.row && p.v.stride.head < p.v.stride.row);
}

inline bool paged_decode_applies(const AttentionParams& p) {
  return token_major(p) && p.has_sequences() && p.sequences > 0 && p.kv_heads > 0 &&
         p.max_seqlen_q <= kFewQueryRows && p.q_heads * p.max_seqlen_q <= kQueryTile && !p.causal &&
         p.window_left < 0 && p.window_right < 0 && !has_score_bias(p) && p.mask_kind == MaskKind::None &&
         !p.dropout.enabled();
}

// Row h·L + i of the tile is query i of head h; the rows of the query heads
// that read kv head kh are the `group·L` rows from kh·group·L on.
template <typename scalar_t, typename acc_t>
class PagedDecodeTile {
 public:
  explicit PagedDecodeTile(const AttentionParams& p)
      : p_(p), rows_per_kv_head_(p.group_size() * p.q_len), q_(p.q_heads * p.q_len * p.head_dim),
        copy_(kKeyTile * std::max(p.head_dim, p.value_dim)) {}

  void load_queries(int64_t b) {
    for (int64_t h = 0; h < p_.q_heads; ++h) {
      load_tile<scalar_t>(p_.q, b, h, 0, p_.q_len, p_.head_dim, q_.data() + h * p_.q_len * p_.head_dim, p_.head_dim);
    }
  }

  void scores(int64_t b, int64_t col0, int64_t cols, acc_t* s, int64_t ld) {
    for_each_piece(b, col0, cols, [&](const KeyRun& run) {
      for (int64_t kh = 0; kh < p_.kv_heads; ++kh) {
        const int64_t row0 = kh * rows_per_kv_head_;
        const auto k = row_operand<scalar_t>(p_.k, run.batch, kh, run.row, run.count, p_.head_dim, copy_.data());
        dot_rows(q_.data() + row0 * p_.head_dim, p_.head_dim, rows_per_kv_head_, k.data, k.ld, run.count, p_.head_dim,
                 static_cast<acc_t>(p_.scale), s + row0 * ld + run.first, ld);
      }
    });
  }

  void add_probs_times_values(int64_t b, int64_t col0, int64_t cols, const acc_t* probs, int64_t ld, acc_t* out) {
    for_each_piece(b, col0, cols, [&](const KeyRun& run) {
      for (int64_t kh = 0; kh < p_.kv_heads; ++kh) {
        const int64_t row0 = kh * rows_per_kv_head_;
        const auto v = row_operand<scalar_t>(p_.v, run.batch, kh, run.row, run.count, p_.value_dim, copy_.data());
        add_rows(out + row0 * p_.value_dim, p_.value_dim, rows_per_kv_head_, v.data, v.ld, run.count, p_.value_dim,
                 probs + row0 * ld + run.first, ld);
      }
    });
  }

 private:
  // Rows of keys that every head takes in turn: few enough (64 KiB at 8
  // heads of 128 float32) to stay in the cache from the first head to the last.
  static constexpr int64_t kPieceRows = 16;

  template <typename Visit>
  void for_each_piece(int64_t b, int64_t col0, int64_t cols, Visit&& visit) {
    for_each_key_run(p_, b, col0, cols, [&](const KeyRun& run) {
      for (int64_t j = 0; j < run.count; j += kPieceRows) {
        visit(KeyRun{run.batch, run.row + j, run.first + j, std::min(kPieceRows, run.count - j)});
      }
    });
  }

  const AttentionParams& p_;
  int64_t rows_per_kv_head_;
  Scratch<acc_t> q_, copy_;
};

template <typename scalar_t, typename acc_t>
void forward_paged_decode(const AttentionParams& p) {
  const int64_t rows = p.q_heads * p.max_seqlen_q;
  const int64_t chunks = key_chunks(p, p.sequences);
  KeyChunkResults<acc_t> results(p.sequences * chunks, rows, p.value_dim);

  at::parallel_for(0, p.sequences * chunks, 1, [&](int64_t begin, int64_t end) {
    ForwardWorkspace<acc_t> ws(p);
    for (int64_t slot = begin; slot < end; ++slot) {
      with_sequence(p, slot / chunks, [&](const AttentionParams& problem, int64_t b) {
        start_query_tile(rows, ws);
        const KeyRange keys = key_chunk(KeyRange{0, problem.kv_len}, chunks, slot % chunks);
        PagedDecodeTile<scalar_t, acc_t> tile(problem);
        tile.load_queries(b);
        acc_t* s = ws.scores.data();
        for (int64_t col0 = keys.first; col0 < keys.end; col0 += kKeyTile) {
          const int64_t cols = std::min(kKeyTile, keys.end - col0);
          tile.scores(b, col0, cols, s, kScoreLd);
          online_softmax_step(TileCoord{b, 0, 0, rows, col0, cols}, s, kScoreLd, ws);
          tile.add_probs_times_values(b, col0, cols, s, kScoreLd, ws.out.data());
        }
        results.save(slot, ws);
      });
    }
  });

  at::parallel_for(0, p.sequences, 1, [&](int64_t begin, int64_t end) {
    ForwardWorkspace<acc_t> ws(p);
    for (int64_t s = begin; s < end; ++s) {
      with_sequence(p, s, [&](const AttentionParams& problem, int64_t b) {
        results.merge(s * chunks, chunks, ws);
        for (int64_t h = 0; h < problem.q_heads; ++h) {
          finish_query_tile<scalar_t>(problem, b, h, 0, problem.q_len, ws, h * problem.q_len);
        }
      });
    }
  });
}

}  // namespace selfattn::cpu
