// The score rules of a block of the first-order problem that are constants
// (see recomputed_gradients.h), as tensors made by the kernels' own tile
// functions (common/score_tile.h), so that the recompute sees exactly the
// scores the kernels saw:
//   bias  the score rules on a zero product: the ALiBi bias and −inf for
//         keys that causality or a window hides (softcapping maps 0 to 0);
//   keep  dropout_multipliers: the forward's dropout mask, regenerated from
//         its seed and offset.
// They are built in host memory, a block at a time, and moved to `options`'
// device.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include "api/double_backward/recomputed_gradients.h"
#include "common/attention_params.h"

namespace selfattn {

// Tensors made in its scope are plain, not wrapped by torch.func's transforms
// as they would be while one runs: host constants the same at every level,
// whose memory the score rules write.
struct OutsideFunctorch {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::DispatchKeySet(
      {c10::DispatchKey::FuncTorchDynamicLayerFrontMode, c10::DispatchKey::FuncTorchDynamicLayerBackMode})};
};

// A block of scores of a problem: batches [batch0, batch0 + batches), query
// rows [row0, row0 + rows) of every head, key columns [key0, key0 + keys).
struct ScoreBlock {
  int64_t batch0, batches;
  int64_t row0, rows;
  int64_t key0, keys;
};

// The constants of a block of `problem` (whose attention mask, if any, is
// applied apart, differentiably). `options` gives the accumulator type and
// the device.
BlockConstants block_constants(const AttentionParams& problem, const ScoreBlock& block,
                               const at::TensorOptions& options);

}  // namespace selfattn
