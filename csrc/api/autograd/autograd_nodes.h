// The autograd graph nodes of the core ops, built by hand as PyTorch's own
// generated kernels build theirs (not as a torch::autograd::Function, which
// torch.func refuses): so the ops are differentiable from LibTorch with no
// Python, and under torch.func's grad, vjp, vmap and jvp transforms.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

#include "api/autograd/saved_settings.h"

namespace selfattn {

// attention_forward below autograd, with a node recording it when an input
// requires grad, and the tangents of the output and the logsumexp when an
// input has one (forward AD). Both the output and the logsumexp are
// differentiable.
// Its backward is attention_backward, which recomputes the probabilities from
// the saved logsumexp (and the dropout mask from the saved rng_state): nothing
// of size L×S is kept between the passes.
std::tuple<at::Tensor, at::Tensor, at::Tensor> record_attention_forward(const at::Tensor& query,
                                                                        const at::Tensor& key,
                                                                        const at::Tensor& value,
                                                                        const std::optional<at::Tensor>& attn_mask,
                                                                        const CallSettings& settings);

// attention_backward below autograd, with a node recording it (double
// backward): its backward, the second derivative, recomputes the first-order
// gradients with differentiable ATen ops, block by block
// (backward_derivative.h).
std::array<at::Tensor, 4> record_attention_backward(const at::Tensor& grad_output, const at::Tensor& query,
                                                    const at::Tensor& key, const at::Tensor& value,
                                                    const std::optional<at::Tensor>& attn_mask,
                                                    const at::Tensor& output, const at::Tensor& logsumexp,
                                                    const at::Tensor& rng_state,
                                                    const std::optional<at::Tensor>& grad_logsumexp,
                                                    const CallSettings& settings);

}  // namespace selfattn
