// Attention sinks (gpt-oss style): one learnable logit per query head that
// joins every row's softmax denominator and carries no value,
//   out_i = Σ_j exp(s_ij) v_j / (exp(sink_h) + Σ_j exp(s_ij)).
// With the logsumexp of the scores alone that is O_i · sigmoid(lse_i − sink_h),
// and the row's logsumexp becomes logaddexp(lse_i, sink_h). Both are formed
// here with differentiable ATen ops on the core op's (output, logsumexp),
// whose logsumexp is differentiable: the sinks, q, k, v and the mask all get
// their gradients from autograd, and masks, windows, GQA and dropout (which
// acts on the normalised weights, that a sink only rescales) work unchanged.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace selfattn {

// What the composites return: output (batch, Hq, L, Ev) and logsumexp
// (batch, Hq, L), the core op's 4-D shapes.
struct AttentionResult {
  at::Tensor output, logsumexp;
};

// `result` with the sinks, of shape (Hq,), joined in; unchanged without
// them. Checks sinks and names them in its errors.
AttentionResult join_sinks(const char* op, AttentionResult result, const std::optional<at::Tensor>& sinks);

}  // namespace selfattn
