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

#include "api/autograd_nodes.h"
#include "api/core_inputs.h"

namespace selfattn {
namespace {

using Optional = const std::optional<at::Tensor>&;

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_forward_autograd(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value, Optional attn_mask, double dropout_p,
    bool is_causal, double scale, int64_t window_left, int64_t window_right, bool bottom_right, Optional alibi_slopes,
    double softcap, Optional cu_seqlens_q, Optional cu_seqlens_k, Optional seqused_k, int64_t max_seqlen_q,
    int64_t max_seqlen_k) {
  const AttentionOptions options = attention_options(window_left, window_right, bottom_right, alibi_slopes, softcap,
                                                     cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k);
  // Checked here too: recording the call reads the inputs' sizes before any
  // backend kernel could, which a nested tensor answers with an internal
  // error, and a sparse one would only meet the dispatcher's "no kernel".
  check_core_inputs("attention_forward", query, key, value, attn_mask, dropout_p, is_causal, options);
  return record_attention_forward(query, key, value, attn_mask, CallSettings{dropout_p, is_causal, scale, false, options});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward_autograd(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    Optional attn_mask, const at::Tensor& output, const at::Tensor& logsumexp, const at::Tensor& rng_state,
    double dropout_p, bool is_causal, double scale, bool attn_mask_requires_grad, int64_t window_left,
    int64_t window_right, bool bottom_right, Optional alibi_slopes, double softcap, Optional cu_seqlens_q,
    Optional cu_seqlens_k, Optional seqused_k, int64_t max_seqlen_q, int64_t max_seqlen_k) {
  const CallSettings settings{dropout_p, is_causal, scale, attn_mask_requires_grad,
                              attention_options(window_left, window_right, bottom_right, alibi_slopes, softcap,
                                                cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k)};
  auto g = record_attention_backward(grad_output, query, key, value, attn_mask, output, logsumexp, rng_state,
                                     settings);
  return {g[0], g[1], g[2], g[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(selfattn, Autograd, m) {
  m.impl("attention_forward", &attention_forward_autograd);
  m.impl("attention_backward", &attention_backward_autograd);
}

}  // namespace selfattn
