// The Autograd kernels of the core ops, in C++, so that they are
// differentiable from LibTorch with no Python in the loop:
//   attention_forward   its backward is attention_backward, which recomputes
//                       the probabilities from the saved logsumexp (and the
//                       dropout mask from the saved rng_state): nothing of
//                       size L×S is kept between the passes;
//   attention_backward  differentiable in turn (double backward): its forward
//                       is the fused backward kernel, as in a plain backward
//                       pass; its backward, the second derivative, recomputes
//                       the first-order gradients with differentiable ATen
//                       ops, block by block (backward_derivative.h).
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <array>

#include "api/autograd/saved_settings.h"
#include "api/core/core_op_kernels.h"
#include "api/core/input_checks.h"
#include "api/core/op_calls.h"
#include "api/double_backward/backward_derivative.h"

namespace selfattn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class AttentionFunction : public torch::autograd::Function<AttentionFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& query, const at::Tensor& key,
                               const at::Tensor& value, const std::optional<at::Tensor>& attn_mask,
                               double dropout_p, bool is_causal, double scale, const AttentionOptions& options) {
    at::AutoDispatchBelowADInplaceOrView guard;
    TORCH_CHECK(!options.alibi_slopes.has_value() || !options.alibi_slopes->requires_grad(),
                "attention_forward: alibi_slopes gets no gradient; pass alibi_slopes.detach()");
    auto [output, logsumexp, rng_state] =
        call_attention_forward(query, key, value, attn_mask, dropout_p, is_causal, scale, options);
    const bool mask_grad = attn_mask.has_value() && attn_mask->requires_grad();
    ctx->save_for_backward({query, key, value, attn_mask.value_or(at::Tensor()), output, logsumexp, rng_state});
    save_settings(ctx, CallSettings{dropout_p, is_causal, scale, mask_grad, options});
    ctx->mark_non_differentiable({logsumexp, rng_state});
    return {output, logsumexp, rng_state};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& query = saved[0];
    const at::Tensor& key = saved[1];
    const at::Tensor& value = saved[2];
    const std::optional<at::Tensor> attn_mask = saved[3].defined() ? std::optional<at::Tensor>(saved[3]) : std::nullopt;
    const at::Tensor& output = saved[4];
    const CallSettings s = saved_settings(ctx);

    at::Tensor grad_output = grad_outputs[0];
    if (!grad_output.defined()) grad_output = at::zeros_like(output);
    // Through the dispatcher, so that attention_backward's own Autograd
    // kernel records the call when a second derivative is wanted.
    auto [grad_query, grad_key, grad_value, grad_mask] =
        call_attention_backward(grad_output, query, key, value, attn_mask, output, saved[5], saved[6], s.dropout_p,
                                s.is_causal, s.scale, s.attn_mask_requires_grad, s.options);
    return {grad_query, grad_key, grad_value, s.attn_mask_requires_grad ? grad_mask : at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class AttentionBackwardFunction : public torch::autograd::Function<AttentionBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_output, const at::Tensor& query,
                               const at::Tensor& key, const at::Tensor& value,
                               const std::optional<at::Tensor>& attn_mask, const at::Tensor& output,
                               const at::Tensor& logsumexp, const at::Tensor& rng_state, const CallSettings& s) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [grad_query, grad_key, grad_value, grad_mask] =
        call_attention_backward(grad_output, query, key, value, attn_mask, output, logsumexp, rng_state, s.dropout_p,
                                s.is_causal, s.scale, s.attn_mask_requires_grad, s.options);
    ctx->save_for_backward(
        {grad_output, query, key, value, attn_mask.value_or(at::Tensor()), output, logsumexp, rng_state});
    save_settings(ctx, s);
    if (!s.attn_mask_requires_grad) ctx->mark_non_differentiable({grad_mask});  // an empty placeholder
    return {grad_query, grad_key, grad_value, grad_mask};
  }

  // Gradients for grad_output, query, key, value and attn_mask; none for
  // output and logsumexp, whose dependence on the inputs the recompute
  // already differentiates (see backward_derivative.h).
  static variable_list backward(AutogradContext* ctx, variable_list grad_grads) {
    const auto saved = ctx->get_saved_variables();
    const CallSettings s = saved_settings(ctx);
    const bool has_mask = saved[4].defined();
    // needs_input_grad counts the tensor arguments that were given: a
    // missing mask takes no index.
    const std::array<bool, kBackwardInputs> wanted = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                                      ctx->needs_input_grad(2), ctx->needs_input_grad(3),
                                                      has_mask && ctx->needs_input_grad(4)};
    const std::array<at::Tensor, 4> first_order_grads = {
        grad_grads[0], grad_grads[1], grad_grads[2], s.attn_mask_requires_grad ? grad_grads[3] : at::Tensor()};
    BackwardInputs g;
    const bool any_wanted = std::any_of(wanted.begin(), wanted.end(), [](bool w) { return w; });
    const bool any_grad = std::any_of(first_order_grads.begin(), first_order_grads.end(),
                                      [](const at::Tensor& t) { return t.defined(); });
    if (any_wanted && any_grad) {
      const BackwardCall call{saved[0], saved[1], saved[2], saved[3],
                              has_mask ? std::optional<at::Tensor>(saved[4]) : std::nullopt,
                              saved[5], saved[6], saved[7], s};
      // The engine runs a backward in grad mode exactly when create_graph is set.
      g = attention_backward_derivative(call, first_order_grads, wanted, at::GradMode::is_enabled());
    }
    return {g[kGradOutput], g[kQuery], g[kKey],       g[kValue],   g[kAttnMask],
            at::Tensor(),   at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

ForwardOutputs attention_forward_autograd(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                          OptionalTensor attn_mask, double dropout_p, bool is_causal, double scale,
                                          const AttentionOptions& options) {
  // Checked here too: Function::apply reads the inputs' sizes before any
  // backend kernel could, which a nested tensor answers with an internal
  // error, and a sparse one would only meet the dispatcher's "no kernel".
  check_core_inputs("attention_forward", query, key, value, attn_mask, dropout_p, is_causal, options);
  auto outputs = AttentionFunction::apply(query, key, value, attn_mask, dropout_p, is_causal, scale, options);
  return {outputs[0], outputs[1], outputs[2]};
}

BackwardOutputs attention_backward_autograd(const at::Tensor& grad_output, const at::Tensor& query,
                                            const at::Tensor& key, const at::Tensor& value, OptionalTensor attn_mask,
                                            const at::Tensor& output, const at::Tensor& logsumexp,
                                            const at::Tensor& rng_state, double dropout_p, bool is_causal,
                                            double scale, bool attn_mask_requires_grad,
                                            const AttentionOptions& options) {
  const CallSettings settings{dropout_p, is_causal, scale, attn_mask_requires_grad, options};
  auto g = AttentionBackwardFunction::apply(grad_output, query, key, value, attn_mask, output, logsumexp, rng_state,
                                            settings);
  return {g[0], g[1], g[2], g[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(selfattn, Autograd, m) {
  register_core_ops<&attention_forward_autograd, &attention_backward_autograd>(m);
}

}  // namespace selfattn
