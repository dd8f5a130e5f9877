// What every backend of the core ops shares: the argument checks, the
// output allocation (symbolic sizes, so the Meta kernels use it too), and the
// translation of tensors into the plain parameter structs of the kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "api/attention_options.h"
#include "common/attention_params.h"

namespace selfattn {

// Checks the arguments of attention_forward / attention_backward, with
// messages that name the offending argument.
void check_core_inputs(const char* op, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                       const std::optional<at::Tensor>& attn_mask, double dropout_p, bool is_causal,
                       const AttentionOptions& options);

// The checks that read the values of cu_seqlens_q, cu_seqlens_k and
// seqused_k, for backends where they are in host memory.
void check_sequence_values(const char* op, const at::Tensor& query, const at::Tensor& key,
                           const AttentionOptions& options);

// Every argument of attention_backward: the forward's, what the forward
// returned, and the gradient of its output.
void check_core_backward_inputs(const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
                                const at::Tensor& value, const std::optional<at::Tensor>& attn_mask,
                                const at::Tensor& output, const at::Tensor& logsumexp, const at::Tensor& rng_state,
                                double dropout_p, bool is_causal, bool attn_mask_requires_grad,
                                const AttentionOptions& options);

// float32 for reduced-precision and float32 inputs, float64 for float64.
at::ScalarType accumulator_type(at::ScalarType dtype);

// (output, logsumexp, rng_state), uninitialised.
std::tuple<at::Tensor, at::Tensor, at::Tensor> allocate_forward_outputs(const at::Tensor& query,
                                                                        const at::Tensor& value);

// (grad_query, grad_key, grad_value, grad_attn_mask), uninitialised.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> allocate_backward_outputs(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, bool attn_mask_requires_grad);

// The options with the ALiBi slopes as the kernels read them: contiguous,
// in the accumulator type of `dtype`. Keep the result alive while the
// kernels run.
AttentionOptions kernel_options(const AttentionOptions& options, at::ScalarType dtype);

// The parameters of one call, all but the dropout seed and offset, which
// each backend keeps in its own way. `options` as kernel_options returns them.
AttentionParams make_params(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                            const std::optional<at::Tensor>& attn_mask, const at::Tensor& output,
                            const at::Tensor& logsumexp, double dropout_p, bool is_causal, double scale,
                            const AttentionOptions& options);

// The dropout seed and offset that attention_forward recorded in rng_state,
// which must be in host memory.
void read_dropout_state(const at::Tensor& rng_state, DropoutParams& dropout);

// Keys of a cache past what its sequence uses (seqused_k) take no part: the
// kernels skip them, and their gradients are zeroed here instead.
void zero_unused_key_gradients(const AttentionOptions& options, at::Tensor& grad_key, at::Tensor& grad_value);

// A 4-D tensor as the kernels see it.
TensorView tensor_view(const at::Tensor& t);

ElementType element_type(at::ScalarType dtype);

}  // namespace selfattn
