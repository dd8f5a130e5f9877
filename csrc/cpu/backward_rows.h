// What the two CPU backward kernels share (attention_backward.cpp with float
// products, matrix_unit_backward.cpp with bfloat16 ones): the end of the row
// statistics and the budget of the tile store.
#pragma once

#include <algorithm>

#include "common/attention_params.h"
#include "common/env_flags.h"
#include "cpu/tile_ops.h"

namespace selfattn::cpu {

// The row statistics of a tile of query rows from the two sums of its first
// sweep, Σ P and Σ P∘dP (in double, P = exp(S − lse) unnormalised):
// row_scale = 1 / Σ P and D = Σ P∘dP / Σ P, less the logsumexp's gradient
// where there is one. Written to `scale` and `delta` and to bp (for the key
// pass). A fully masked row keeps P = 0.
template <typename acc_t>
void finish_row_statistics(const AttentionBackwardParams& bp, int64_t b, int64_t h, int64_t row0, int64_t rows,
                           const double* prob_sum, const double* weighted_sum, acc_t* scale, acc_t* delta) {
  for (int64_t r = 0; r < rows; ++r) {
    const double inverse = prob_sum[r] > 0.0 ? 1.0 / prob_sum[r] : 1.0;
    scale[r] = static_cast<acc_t>(inverse);
    delta[r] = static_cast<acc_t>(weighted_sum[r] * inverse);
  }
  const int64_t first = bp.fwd.row_index(b, h, row0);
  if (bp.grad_logsumexp != nullptr) {
    const acc_t* grad_lse = static_cast<const acc_t*>(bp.grad_logsumexp) + first;
    for (int64_t r = 0; r < rows; ++r) delta[r] -= grad_lse[r];
  }
  std::copy_n(scale, rows, static_cast<acc_t*>(bp.row_scale) + first);
  std::copy_n(delta, rows, static_cast<acc_t*>(bp.delta) + first);
}

// Bytes of P and dP that a thread may keep for one tile of query rows, so
// that the second sweep over its keys reuses them instead of recomputing
// both products. Linear in S: 2 × 256 rows × S floats, 8 MiB at S = 4k and
// 16 MiB at 8k, which no longer fits: from there the second sweep
// recomputes, and the backward's peak memory stays within 1.2× of PyTorch's
// (measured at 16k and 32k) and far below one L × S matrix at 8k
// (tests/test_memory.py), where the store's saving is a small part of the
// work.
constexpr int64_t kTileStoreBytes = int64_t(12) << 20;

// Whether a thread keeps P and dP of every key tile of kv_len keys. Not with
// softcap, whose derivative would have to be kept as well.
template <typename acc_t>
bool keeps_all_tiles(const AttentionParams& p, int64_t kv_len) {
  static const bool store_disabled = env_flag("TORCH_SELFATTN_NO_TILE_STORE");
  const int64_t bytes = 2 * ceil_div(kv_len, kKeyTile) * kQueryTile * kScoreLd * static_cast<int64_t>(sizeof(acc_t));
  return !store_disabled && p.softcap <= 0.0 && bytes <= kTileStoreBytes;
}

}  // namespace selfattn::cpu
