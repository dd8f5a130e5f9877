// Shapes only, for fake tensors and torch.compile. The sizes stay symbolic,
// so dynamic shapes trace through.
#include <torch/library.h>

#include "api/core/core_op_kernels.h"
#include "api/core/input_checks.h"
#include "api/core/op_outputs.h"

namespace selfattn {
namespace {

ForwardOutputs attention_forward_meta(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                      OptionalTensor attn_mask, double dropout_p, bool is_causal, double scale,
                                      const AttentionOptions& options) {
  check_core_inputs("attention_forward", query, key, value, attn_mask, dropout_p, is_causal, options);
  return allocate_forward_outputs(query, value);
}

BackwardOutputs attention_backward_meta(const at::Tensor& grad_output, const at::Tensor& query,
                                        const at::Tensor& key, const at::Tensor& value, OptionalTensor attn_mask,
                                        const at::Tensor& output, const at::Tensor& logsumexp,
                                        const at::Tensor& rng_state, double dropout_p, bool is_causal, double scale,
                                        bool attn_mask_requires_grad, OptionalTensor grad_logsumexp,
                                        const AttentionOptions& options) {
  check_core_backward_inputs(grad_output, query, key, value, attn_mask, output, logsumexp, rng_state, dropout_p,
                             is_causal, attn_mask_requires_grad, grad_logsumexp, options);
  return allocate_backward_outputs(query, key, value, attn_mask, attn_mask_requires_grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(selfattn, Meta, m) { register_core_ops<&attention_forward_meta, &attention_backward_meta>(m); }

}  // namespace selfattn
