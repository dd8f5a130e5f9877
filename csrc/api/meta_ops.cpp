// Shapes only, for fake tensors and torch.compile. The sizes stay symbolic,
// so dynamic shapes trace through.
#include <torch/library.h>

#include "api/core_inputs.h"

namespace selfattn {
namespace {

using Optional = const std::optional<at::Tensor>&;

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_forward_meta(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value, Optional attn_mask, double dropout_p,
    bool is_causal, double scale, int64_t window_left, int64_t window_right, bool bottom_right, Optional alibi_slopes,
    double softcap, Optional cu_seqlens_q, Optional cu_seqlens_k, Optional seqused_k, int64_t max_seqlen_q,
    int64_t max_seqlen_k) {
  check_core_inputs("attention_forward", query, key, value, attn_mask, dropout_p, is_causal,
                    attention_options(window_left, window_right, bottom_right, alibi_slopes, softcap, cu_seqlens_q,
                                      cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k));
  return allocate_forward_outputs(query, value);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward_meta(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    Optional attn_mask, const at::Tensor& output, const at::Tensor& logsumexp, const at::Tensor& rng_state,
    double dropout_p, bool is_causal, double scale, bool attn_mask_requires_grad, int64_t window_left,
    int64_t window_right, bool bottom_right, Optional alibi_slopes, double softcap, Optional cu_seqlens_q,
    Optional cu_seqlens_k, Optional seqused_k, int64_t max_seqlen_q, int64_t max_seqlen_k) {
  check_core_backward_inputs(grad_output, query, key, value, attn_mask, output, logsumexp, rng_state, dropout_p,
                             is_causal, attn_mask_requires_grad,
                             attention_options(window_left, window_right, bottom_right, alibi_slopes, softcap,
                                               cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k));
  return allocate_backward_outputs(query, key, value, attn_mask, attn_mask_requires_grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(selfattn, Meta, m) {
  m.impl("attention_forward", &attention_forward_meta);
  m.impl("attention_backward", &attention_backward_meta);
}

}  // namespace selfattn
