#include "api/core/paged_cache.h"

#include <ATen/ATen.h>

namespace selfattn {
namespace {

// The table with every entry inside [0, blocks): the entries a sequence uses
// are checked (check_sequence_values, on the CPU); the others, padding that
// may hold anything, then gather a block that no visible key comes from.
at::Tensor safe_table(const at::Tensor& table, int64_t blocks) {
  return table.to(at::kLong).clamp(0, std::max<int64_t>(blocks - 1, 0));
}

// (num_blocks, H, block_size, dim) blocks → (batch, H, max_blocks·block_size, dim).
at::Tensor gather(const at::Tensor& blocks, const at::Tensor& table) {
  const int64_t batch = table.size(0), max_blocks = table.size(1);
  const at::Tensor rows = blocks.index_select(0, safe_table(table, blocks.size(0)).flatten());
  return rows.view({batch, max_blocks, blocks.size(1), blocks.size(2), blocks.size(3)})
      .permute({0, 2, 1, 3, 4})
      .reshape({batch, blocks.size(1), max_blocks * blocks.size(2), blocks.size(3)});
}

// The inverse of gather for gradients: each block gets the sum of its copies'.
at::Tensor scatter(const at::Tensor& rows, const at::Tensor& table, const at::Tensor& blocks) {
  const int64_t batch = table.size(0), max_blocks = table.size(1);
  const at::Tensor per_block = rows.view({batch, blocks.size(1), max_blocks, blocks.size(2), blocks.size(3)})
                                   .permute({0, 2, 1, 3, 4})
                                   .reshape({batch * max_blocks, blocks.size(1), blocks.size(2), blocks.size(3)});
  return at::zeros_like(blocks).index_add_(0, safe_table(table, blocks.size(0)).flatten(), per_block);
}

AttentionOptions without_table(AttentionOptions options) {
  options.block_table.reset();
  return options;
}

}  // namespace

ForwardOutputs forward_on_gathered_cache(ForwardKernel* kernel, const at::Tensor& query, const at::Tensor& key,
                                         const at::Tensor& value, OptionalTensor attn_mask, double dropout_p,
                                         bool is_causal, double scale, const AttentionOptions& options) {
  const at::Tensor& table = *options.block_table;
  return kernel(query, gather(key, table), gather(value, table), attn_mask, dropout_p, is_causal, scale,
                without_table(options));
}

BackwardOutputs backward_on_gathered_cache(BackwardKernel* kernel, const at::Tensor& grad_output,
                                           const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                           OptionalTensor attn_mask, const at::Tensor& output,
                                           const at::Tensor& logsumexp, const at::Tensor& rng_state, double dropout_p,
                                           bool is_causal, double scale, bool attn_mask_requires_grad,
                                           OptionalTensor grad_logsumexp, const AttentionOptions& options) {
  const at::Tensor& table = *options.block_table;
  auto [grad_query, grad_key, grad_value, grad_mask] =
      kernel(grad_output, query, gather(key, table), gather(value, table), attn_mask, output, logsumexp, rng_state,
             dropout_p, is_causal, scale, attn_mask_requires_grad, grad_logsumexp, without_table(options));
  return {grad_query, scatter(grad_key, table, key), scatter(grad_value, table, value), grad_mask};
}

}  // namespace selfattn
