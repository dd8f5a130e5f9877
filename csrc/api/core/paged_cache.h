// A paged KV cache (the block_table option) where a kernel reads contiguous
// keys: the blocks each sequence uses, gathered into a (batch, H,
// max_blocks·block_size, dim) copy, and gradients scattered back onto the
// blocks. The CPU forward reads the blocks in place; its backward, and the
// CUDA kernels, run on the gathered copy. Two sequences may share a block:
// its gradient is then the sum of theirs.
#pragma once

#include "api/core/core_op_kernels.h"

namespace selfattn {

// `kernel` on the gathered cache, with the options less block_table.
ForwardOutputs forward_on_gathered_cache(ForwardKernel* kernel, const at::Tensor& query, const at::Tensor& key,
                                         const at::Tensor& value, OptionalTensor attn_mask, double dropout_p,
                                         bool is_causal, double scale, const AttentionOptions& options);

// `kernel` on the gathered cache, its key and value gradients scattered
// back onto the blocks (zero where no sequence reads).
BackwardOutputs backward_on_gathered_cache(BackwardKernel* kernel, const at::Tensor& grad_output,
                                           const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                           OptionalTensor attn_mask, const at::Tensor& output,
                                           const at::Tensor& logsumexp, const at::Tensor& rng_state, double dropout_p,
                                           bool is_causal, double scale, bool attn_mask_requires_grad,
                                           OptionalTensor grad_logsumexp, const AttentionOptions& options);

}  // namespace selfattn
