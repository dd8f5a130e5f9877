// Calls of the core ops through the dispatcher, for the C++ code that builds
// on them (the autograd kernel, the composites).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "api/core/attention_options.h"

namespace selfattn {

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_attention_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, double dropout_p, bool is_causal, double scale,
    const AttentionOptions& options = {});

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> call_attention_backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, const at::Tensor& output, const at::Tensor& logsumexp,
    const at::Tensor& rng_state, double dropout_p, bool is_causal, double scale, bool attn_mask_requires_grad,
    const std::optional<at::Tensor>& grad_logsumexp, const AttentionOptions& options = {});

}  // namespace selfattn
