// The argument checks of the core ops, made once for every backend (CPU,
// CUDA, Meta, Autograd), with messages that name the offending argument.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "api/core/attention_options.h"

namespace selfattn {

// The number of sequences: packed ones (cu_seqlens), or one per batch.
c10::SymInt sequence_count(const at::Tensor& query, const AttentionOptions& options);

// Checks the arguments of attention_forward / attention_backward.
void check_core_inputs(const char* op, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                       const std::optional<at::Tensor>& attn_mask, double dropout_p, bool is_causal,
                       const AttentionOptions& options);

// The checks that read the values of cu_seqlens_q, cu_seqlens_k and
// seqused_k, for backends where they are in host memory.
void check_sequence_values(const char* op, const at::Tensor& query, const at::Tensor& key,
                           const AttentionOptions& options);

// Every argument of attention_backward: the forward's, what the forward
// returned, and the gradients of its output and logsumexp.
void check_core_backward_inputs(const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
                                const at::Tensor& value, const std::optional<at::Tensor>& attn_mask,
                                const at::Tensor& output, const at::Tensor& logsumexp, const at::Tensor& rng_state,
                                double dropout_p, bool is_causal, bool attn_mask_requires_grad,
                                const std::optional<at::Tensor>& grad_logsumexp, const AttentionOptions& options);

}  // namespace selfattn
