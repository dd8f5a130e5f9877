#include "api/op_calls.h"

#include <ATen/core/dispatch/Dispatcher.h>

namespace selfattn {

using Optional = const std::optional<at::Tensor>&;
using ForwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, Optional, double, bool, double, int64_t, int64_t, bool,
    Optional, double, Optional, Optional, Optional, int64_t, int64_t);
using BackwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, Optional, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, double, bool, double, bool, int64_t, int64_t, bool, Optional, double,
    Optional, Optional, Optional, int64_t, int64_t);

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_attention_forward(const at::Tensor& query, const at::Tensor& key,
                                                                      const at::Tensor& value, Optional attn_mask,
                                                                      double dropout_p, bool is_causal, double scale,
                                                                      const AttentionOptions& o) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("selfattn::attention_forward", "")
                       .typed<ForwardSignature>();
  return op.call(query, key, value, attn_mask, dropout_p, is_causal, scale, o.window_left, o.window_right,
                 o.bottom_right, o.alibi_slopes, o.softcap, o.cu_seqlens_q, o.cu_seqlens_k, o.seqused_k,
                 o.max_seqlen_q, o.max_seqlen_k);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> call_attention_backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    Optional attn_mask, const at::Tensor& output, const at::Tensor& logsumexp, const at::Tensor& rng_state,
    double dropout_p, bool is_causal, double scale, bool attn_mask_requires_grad, const AttentionOptions& o) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("selfattn::attention_backward", "")
                       .typed<BackwardSignature>();
  return op.call(grad_output, query, key, value, attn_mask, output, logsumexp, rng_state, dropout_p, is_causal, scale,
                 attn_mask_requires_grad, o.window_left, o.window_right, o.bottom_right, o.alibi_slopes, o.softcap,
                 o.cu_seqlens_q, o.cu_seqlens_k, o.seqused_k, o.max_seqlen_q, o.max_seqlen_k);
}

}  // namespace selfattn
