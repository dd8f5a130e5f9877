#include "api/core/op_calls.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include "api/core/core_op_kernels.h"

namespace selfattn {

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_attention_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, double dropout_p, bool is_causal, double scale,
    const AttentionOptions& options) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("selfattn::attention_forward", "")
                       .typed<ForwardOpSignature>();
  return op.call(query, key, value, attn_mask, dropout_p, is_causal,
                 scale SELFATTN_CORE_OPTIONS(SELFATTN_OPTION_FROM_OPTIONS));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> call_attention_backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, const at::Tensor& output, const at::Tensor& logsumexp,
    const at::Tensor& rng_state, double dropout_p, bool is_causal, double scale, bool attn_mask_requires_grad,
    const std::optional<at::Tensor>& grad_logsumexp, const AttentionOptions& options) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("selfattn::attention_backward", "")
                       .typed<BackwardOpSignature>();
  return op.call(grad_output, query, key, value, attn_mask, output, logsumexp, rng_state, dropout_p, is_causal, scale,
                 attn_mask_requires_grad, grad_logsumexp SELFATTN_CORE_OPTIONS(SELFATTN_OPTION_FROM_OPTIONS));
}

}  // namespace selfattn
