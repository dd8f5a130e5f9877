// The outputs of the core ops, allocated with symbolic sizes so that the
// Meta kernels use the same code as the backends.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "api/core/attention_options.h"

namespace selfattn {

// float32 for reduced-precision and float32 inputs, float64 for float64.
at::ScalarType accumulator_type(at::ScalarType dtype);

// (output, logsumexp, rng_state), uninitialised.
std::tuple<at::Tensor, at::Tensor, at::Tensor> allocate_forward_outputs(const at::Tensor& query,
                                                                        const at::Tensor& value);

// (grad_query, grad_key, grad_value, grad_attn_mask), uninitialised.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> allocate_backward_outputs(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, bool attn_mask_requires_grad);

// Keys of a cache past what its sequence uses (seqused_k) take no part: the
// kernels skip them, and their gradients are zeroed here instead.
void zero_unused_key_gradients(const AttentionOptions& options, at::Tensor& grad_key, at::Tensor& grad_value);

}  // namespace selfattn
