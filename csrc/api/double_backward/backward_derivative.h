// The derivative of attention_backward: the second derivative of attention.
//
// attention_backward maps (grad_output, q, k, v, mask, output, logsumexp) to
// (dQ, dK, dV, dMask). But output and logsumexp are themselves functions of
// q, k, v and the mask: differentiating through them as inputs of their own
// would count that dependence twice. So the first-order gradients are taken
// as a function of (grad_output, q, k, v, mask) alone and recomputed from
// them (the probabilities from the scores, D = rowsum(P ∘ dP) from those
// probabilities, see recomputed_gradients.h); autograd differentiates that
// recompute, and output and logsumexp get no gradient.
//
// The recompute runs a block of query rows at a time, over every head (and
// several batches when the sequences are short), with at most kBlockScores
// scores per block: a block's graph is differentiated and freed before the
// next is built, so the memory is O(block), never the L×S of every head.
// With create_graph (a derivative of this derivative), every block's graph
// has to stay for the next backward, and the memory is that of all scores.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>

#include "api/autograd/saved_settings.h"

namespace selfattn {

// The arguments of one attention_backward call.
struct BackwardCall {
  at::Tensor grad_output, query, key, value;
  std::optional<at::Tensor> attn_mask;
  at::Tensor output, logsumexp, rng_state;
  CallSettings settings;
  std::optional<at::Tensor> grad_logsumexp;
};

// Indices into the arrays below: the inputs that can get a gradient.
enum BackwardInput { kGradOutput, kQuery, kKey, kValue, kAttnMask, kGradLogsumexp, kBackwardInputs };
using BackwardInputs = std::array<at::Tensor, kBackwardInputs>;

// grad_grads: the gradients of (grad_query, grad_key, grad_value,
// grad_attn_mask), any of them undefined. Returns the gradients of the
// inputs for which `wanted` is set (undefined where none flows), in the
// graph when create_graph is set.
BackwardInputs attention_backward_derivative(const BackwardCall& call, const std::array<at::Tensor, 4>& grad_grads,
                                             const std::array<bool, kBackwardInputs>& wanted, bool create_graph);

}  // namespace selfattn
