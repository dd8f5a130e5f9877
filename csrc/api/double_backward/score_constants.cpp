#include "api/double_backward/score_constants.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include "common/score_tile.h"

namespace selfattn {
namespace {

bool hides_keys(const AttentionParams& p) { return p.causal || p.window_left >= 0 || p.window_right >= 0; }

// One (rows, keys) tile per (batch, head) of `t`, filled by `fill_tile`.
template <typename acc_t, typename Fill>
void fill_tiles(at::Tensor& t, const ScoreBlock& block, Fill&& fill_tile) {
  const int64_t tile_size = block.rows * block.keys;
  acc_t* data = t.data_ptr<acc_t>();
  for (int64_t b = 0; b < t.size(0); ++b) {
    for (int64_t h = 0; h < t.size(1); ++h) {
      const TileCoord tile{block.batch0 + b, h, block.row0, block.rows, block.key0, block.keys};
      fill_tile(tile, data + (b * t.size(1) + h) * tile_size, block.keys);
    }
  }
}

}  // namespace

BlockConstants block_constants(const AttentionParams& p, const ScoreBlock& block, const at::TensorOptions& options) {
  const OutsideFunctorch plain;
  const at::TensorOptions host = options.device(at::kCPU);
  const bool alibi = p.alibi_slopes != nullptr;
  BlockConstants c;
  AT_DISPATCH_FLOATING_TYPES(options.dtype().toScalarType(), "block_constants", [&] {
    if (alibi || hides_keys(p)) {
      // Visibility is the same for every head and batch; ALiBi slopes may be per head and per batch.
      const int64_t batches = alibi && p.alibi_batch_stride != 0 ? block.batches : 1;
      c.bias = at::zeros({batches, alibi ? p.q_heads : 1, block.rows, block.keys}, host);
      fill_tiles<scalar_t>(c.bias, block, [&](const TileCoord& t, scalar_t* tile, int64_t ld) {
        if (has_score_bias(p)) add_score_bias(p, t, tile, ld, static_cast<scalar_t*>(nullptr));
        hide_invisible_keys(p, t, tile, ld);
      });
    }
    if (p.dropout.enabled()) {
      c.keep = at::empty({block.batches, p.q_heads, block.rows, block.keys}, host);
      fill_tiles<scalar_t>(c.keep, block, [&](const TileCoord& t, scalar_t* tile, int64_t ld) {
        dropout_multipliers(p, t, tile, ld);
      });
    }
  });
  if (c.bias.defined()) c.bias = c.bias.to(options.device());
  if (c.keep.defined()) c.keep = c.keep.to(options.device());
  return c;
}

}  // namespace selfattn
