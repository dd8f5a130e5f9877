// The first-order gradients of attention for one block of query rows, as
// differentiable ATen ops: what the fused backward kernel computes, written
// so that autograd can differentiate it once more (double backward, see
// backward_derivative.h). Shapes of a block:
//   query (n, Hq, rows, E), grad_output (n, Hq, rows, Ev),
//   key (n, H, keys, E), value (n, H, keys, Ev), Hq a multiple of H,
//   attn_mask broadcasting to (n, Hq, rows, keys).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace selfattn {

struct BlockInputs {
  at::Tensor grad_output, query, key, value;
  std::optional<at::Tensor> attn_mask;  // bool, or float (added to the scores)
  at::Tensor grad_logsumexp;            // (n, Hq, rows), or undefined for none
};

// The score rules that are constants of the block, in the accumulator type
// (see score_constants.h).
struct BlockConstants {
  at::Tensor bias;  // added to the (softcapped) scores: ALiBi, −inf for keys that causality or a window hides
  at::Tensor keep;  // the dropout multipliers, 0 or 1/(1 − p)
};

struct BlockGradients {
  at::Tensor grad_query, grad_key, grad_value;
  at::Tensor grad_attn_mask;  // reduced to the mask's shape; undefined for a bool mask or none
};

// Gradients in the dtypes of the inputs, computed in the accumulator type.
// Either constant may be undefined (no such rule).
BlockGradients recompute_gradients(const BlockInputs& inputs, const BlockConstants& constants, double scale,
                                   double softcap);

}  // namespace selfattn
