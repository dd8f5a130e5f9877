#include "api/op_calls.h"

#include <ATen/core/dispatch/Dispatcher.h>

namespace selfattn {

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_attention_forward(const at::Tensor& query, const at::Tensor& key,
                                                                      const at::Tensor& value,
                                                                      const std::optional<at::Tensor>& attn_mask,
                                                                      double dropout_p, bool is_causal, double scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("selfattn::attention_forward", "")
                       .typed<decltype(call_attention_forward)>();
  return op.call(query, key, value, attn_mask, dropout_p, is_causal, scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> call_attention_backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, const at::Tensor& output, const at::Tensor& logsumexp,
    const at::Tensor& rng_state, double dropout_p, bool is_causal, double scale, bool attn_mask_requires_grad) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("selfattn::attention_backward", "")
                       .typed<decltype(call_attention_backward)>();
  return op.call(grad_output, query, key, value, attn_mask, output, logsumexp, rng_state, dropout_p, is_causal,
                 scale, attn_mask_requires_grad);
}

}  // namespace selfattn
