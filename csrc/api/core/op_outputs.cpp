#include "api/core/op_outputs.h"

#include <ATen/ops/empty.h>

namespace selfattn {

at::ScalarType accumulator_type(at::ScalarType dtype) { return dtype == at::kDouble ? at::kDouble : at::kFloat; }

std::tuple<at::Tensor, at::Tensor, at::Tensor> allocate_forward_outputs(const at::Tensor& query,
                                                                        const at::Tensor& value) {
  const auto B = query.sym_size(0), Hq = query.sym_size(1), L = query.sym_size(2);
  auto output = at::empty_symint({B, Hq, L, value.sym_size(3)}, query.options());
  auto logsumexp = at::empty_symint({B, Hq, L}, query.options().dtype(accumulator_type(query.scalar_type())));
  auto rng_state = at::empty({2}, query.options().dtype(at::kLong));
  return {output, logsumexp, rng_state};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> allocate_backward_outputs(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, bool attn_mask_requires_grad) {
  const bool mask_grad = attn_mask_requires_grad && attn_mask.has_value();
  auto grad_mask = mask_grad ? at::empty_symint(attn_mask->sym_sizes(), attn_mask->options())
                             : at::empty({0}, query.options());
  return {at::empty_symint(query.sym_sizes(), query.options()), at::empty_symint(key.sym_sizes(), key.options()),
          at::empty_symint(value.sym_sizes(), value.options()), grad_mask};
}

void zero_unused_key_gradients(const AttentionOptions& options, at::Tensor& grad_key, at::Tensor& grad_value) {
  if (!options.seqused_k.has_value()) return;
  grad_key.zero_();
  grad_value.zero_();
}

}  // namespace selfattn
