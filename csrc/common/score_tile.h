// The score rules and the dropout decisions applied to a row-major tile of
// scores: what the CPU kernels (cpu/tile_ops.h) and the double backward's
// recompute (api/double_backward/score_constants.cpp) both build from, so
// that the recompute sees exactly the scores and the dropout mask the kernels
// saw. The attention mask, whose element types are the backend's, is added
// by cpu/tile_ops.h.
#pragma once

#include <algorithm>
#include <cstdint>

#include "common/attention_params.h"
#include "common/dropout_index.h"
#include "common/numeric.h"
#include "common/philox.h"
#include "common/score_rules.h"

namespace selfattn {

// The extent of a score tile: query rows [row0, row0 + rows) of head (b, h)
// against key columns [col0, col0 + cols).
struct TileCoord {
  int64_t b, h, row0, rows, col0, cols;
};

// softcap and ALiBi (see common/score_rules.h) on a tile of scaled scores.
// `slopes`, when given, receives the derivative of each biased score by its
// scaled score, for the backward.
template <typename acc_t>
void add_score_bias(const AttentionParams& p, const TileCoord& t, acc_t* scores, int64_t ld, acc_t* slopes) {
  const int64_t shift = diagonal_shift(p, p.q_len, p.kv_len);
  const acc_t alibi = p.alibi_slopes != nullptr ? alibi_slope<acc_t>(p, t.b, t.h) : acc_t(0);
  for (int64_t r = 0; r < t.rows; ++r) {
    for (int64_t c = 0; c < t.cols; ++c) {
      acc_t* slope = slopes != nullptr ? slopes + r * ld + c : nullptr;
      scores[r * ld + c] = biased_score(p, scores[r * ld + c], alibi, t.row0 + r, t.col0 + c, shift, slope);
    }
  }
}

// −inf wherever causality or a window hides a key from a query row of the tile.
template <typename acc_t>
void hide_invisible_keys(const AttentionParams& p, const TileCoord& t, acc_t* scores, int64_t ld) {
  if (!p.causal && p.window_left < 0 && p.window_right < 0) return;
  const int64_t shift = diagonal_shift(p, p.q_len, p.kv_len);
  for (int64_t r = 0; r < t.rows; ++r) {
    const KeyRange seen = visible_keys(p, t.row0 + r, shift, p.kv_len);
    acc_t* s = scores + r * ld;
    const int64_t first = std::clamp<int64_t>(seen.first - t.col0, 0, t.cols);
    const int64_t end = std::clamp<int64_t>(seen.end - t.col0, first, t.cols);
    std::fill(s, s + first, minus_infinity<acc_t>());
    std::fill(s + end, s + t.cols, minus_infinity<acc_t>());
  }
}

// Dropout multipliers of a tile: 1/(1-p) where the element is kept, 0 where
// it is dropped. The decision for element (b, h, i, j) depends only on the
// seed, the offset and its index (common/dropout_index.h).
template <typename acc_t>
void dropout_multipliers(const AttentionParams& p, const TileCoord& t, acc_t* z, int64_t ld) {
  const uint64_t threshold = dropout_threshold(p.dropout.p);
  const acc_t kept = p.dropout.p >= 1.0 ? acc_t(0) : acc_t(1.0 / (1.0 - p.dropout.p));
  for (int64_t r = 0; r < t.rows; ++r) {
    uint64_t index = batch_dropout_index(p, t.b, t.h, t.row0 + r, t.col0);
    // One Philox call yields the words of four consecutive indices.
    uint64_t block = index >> 2;
    Philox4x32 words = dropout_words(p.dropout.seed, p.dropout.offset, block);
    for (int64_t c = 0; c < t.cols; ++c, ++index) {
      if ((index >> 2) != block) {
        block = index >> 2;
        words = dropout_words(p.dropout.seed, p.dropout.offset, block);
      }
      z[r * ld + c] = words.word[index & 3] >= threshold ? kept : acc_t(0);
    }
  }
}

}  // namespace selfattn
