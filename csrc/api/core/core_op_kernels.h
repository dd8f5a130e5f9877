// The core ops' signatures as the dispatcher calls them, generated from the
// option list (attention_options.h), so that each backend writes its kernels
// once, taking the options gathered:
//
//   ForwardOutputs my_forward(query, key, value, attn_mask, dropout_p,
//                             is_causal, scale, const AttentionOptions&);
//   TORCH_LIBRARY_IMPL(selfattn, Backend, m) {
//     register_core_ops<&my_forward, &my_backward>(m);
//   }
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "api/core/attention_options.h"

namespace selfattn {

using OptionalTensor = const std::optional<at::Tensor>&;
using ForwardOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;  // output, logsumexp, rng_state
using BackwardOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;  // grads of q, k, v, attn_mask

using ForwardKernel = ForwardOutputs(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                     OptionalTensor attn_mask, double dropout_p, bool is_causal, double scale,
                                     const AttentionOptions& options);
using BackwardKernel = BackwardOutputs(const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
                                       const at::Tensor& value, OptionalTensor attn_mask, const at::Tensor& output,
                                       const at::Tensor& logsumexp, const at::Tensor& rng_state, double dropout_p,
                                       bool is_causal, double scale, bool attn_mask_requires_grad,
                                       OptionalTensor grad_logsumexp, const AttentionOptions& options);

// `kernel` behind attention_forward's schema, option by option.
template <ForwardKernel* kernel>
ForwardOutputs forward_op(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                          OptionalTensor attn_mask, double dropout_p, bool is_causal,
                          double scale SELFATTN_CORE_OPTIONS(SELFATTN_OPTION_PARAMETER)) {
  return kernel(query, key, value, attn_mask, dropout_p, is_causal, scale,
                AttentionOptions{SELFATTN_CORE_OPTIONS(SELFATTN_OPTION_NAME)});
}

// `kernel` behind attention_backward's schema, option by option.
template <BackwardKernel* kernel>
BackwardOutputs backward_op(const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
                            const at::Tensor& value, OptionalTensor attn_mask, const at::Tensor& output,
                            const at::Tensor& logsumexp, const at::Tensor& rng_state, double dropout_p,
                            bool is_causal, double scale,
                            bool attn_mask_requires_grad,
                            OptionalTensor grad_logsumexp SELFATTN_CORE_OPTIONS(SELFATTN_OPTION_PARAMETER)) {
  return kernel(grad_output, query, key, value, attn_mask, output, logsumexp, rng_state, dropout_p, is_causal, scale,
                attn_mask_requires_grad, grad_logsumexp, AttentionOptions{SELFATTN_CORE_OPTIONS(SELFATTN_OPTION_NAME)});
}

// The ops' own function types, for typed dispatcher calls.
using ForwardOpSignature = decltype(forward_op<nullptr>);
using BackwardOpSignature = decltype(backward_op<nullptr>);

// Registers a backend's kernels for attention_forward and attention_backward.
template <ForwardKernel* forward, BackwardKernel* backward>
void register_core_ops(torch::Library& m) {
  m.impl("attention_forward", &forward_op<forward>);
  m.impl("attention_backward", &backward_op<backward>);
}

}  // namespace selfattn
