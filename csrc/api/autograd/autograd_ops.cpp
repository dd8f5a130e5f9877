// The Autograd kernels of the core ops, in C++, so that they are
// differentiable from LibTorch with no Python in the loop, and under
// torch.func's transforms (their graph nodes: autograd_nodes.h):
//   attention_forward   its backward is attention_backward, which recomputes
//                       the probabilities from the saved logsumexp (and the
//                       dropout mask from the saved rng_state): nothing of
//                       size L×S is kept between the passes;
//   attention_backward  differentiable in turn (double backward): its forward
//                       is the fused backward kernel, as in a plain backward
//                       pass; its backward, the second derivative, recomputes
//                       the first-order gradients with differentiable ATen
//                       ops, block by block (backward_derivative.h).
#include <torch/library.h>

#include "api/autograd/autograd_nodes.h"
#include "api/core/core_op_kernels.h"
#include "api/core/input_checks.h"

namespace selfattn {
namespace {

ForwardOutputs attention_forward_autograd(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                          OptionalTensor attn_mask, double dropout_p, bool is_causal, double scale,
                                          const AttentionOptions& options) {
  // Checked here too: recording the call reads the inputs' sizes before any
  // backend kernel could, which a nested tensor answers with an internal
  // error, and a sparse one would only meet the dispatcher's "no kernel".
  check_core_inputs("attention_forward", query, key, value, attn_mask, dropout_p, is_causal, options);
  return record_attention_forward(query, key, value, attn_mask, CallSettings{dropout_p, is_causal, scale, false, options});
}

BackwardOutputs attention_backward_autograd(const at::Tensor& grad_output, const at::Tensor& query,
                                            const at::Tensor& key, const at::Tensor& value, OptionalTensor attn_mask,
                                            const at::Tensor& output, const at::Tensor& logsumexp,
                                            const at::Tensor& rng_state, double dropout_p, bool is_causal,
                                            double scale, bool attn_mask_requires_grad,
                                            OptionalTensor grad_logsumexp, const AttentionOptions& options) {
  const CallSettings settings{dropout_p, is_causal, scale, attn_mask_requires_grad, options};
  auto g = record_attention_backward(grad_output, query, key, value, attn_mask, output, logsumexp, rng_state,
                                     grad_logsumexp, settings);
  return {g[0], g[1], g[2], g[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(selfattn, Autograd, m) {
  register_core_ops<&attention_forward_autograd, &attention_backward_autograd>(m);
}

}  // namespace selfattn
