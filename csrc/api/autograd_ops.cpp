// Autograd for attention_forward, in C++, so that the op is differentiable
// from LibTorch with no Python in the loop. The backward recomputes the
// probabilities from the saved logsumexp (and the dropout mask from the saved
// rng_state): nothing of size L×S is kept between the passes.
#include <torch/autograd.h>
#include <torch/library.h>

#include "api/core_inputs.h"
#include "api/op_calls.h"

namespace selfattn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class AttentionFunction : public torch::autograd::Function<AttentionFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& query, const at::Tensor& key,
                               const at::Tensor& value, const std::optional<at::Tensor>& attn_mask,
                               double dropout_p, bool is_causal, double scale) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [output, logsumexp, rng_state] = call_attention_forward(query, key, value, attn_mask, dropout_p, is_causal, scale);
    const bool mask_grad = attn_mask.has_value() && attn_mask->requires_grad();
    ctx->save_for_backward({query, key, value, attn_mask.value_or(at::Tensor()), output, logsumexp, rng_state});
    ctx->saved_data["dropout_p"] = dropout_p;
    ctx->saved_data["is_causal"] = is_causal;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["mask_grad"] = mask_grad;
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
    const bool mask_grad = ctx->saved_data["mask_grad"].toBool();

    at::Tensor grad_output = grad_outputs[0];
    if (!grad_output.defined()) grad_output = at::zeros_like(output);
    auto [grad_query, grad_key, grad_value, grad_mask] =
        call_attention_backward(grad_output, query, key, value, attn_mask, output, saved[5], saved[6],
                      ctx->saved_data["dropout_p"].toDouble(), ctx->saved_data["is_causal"].toBool(),
                      ctx->saved_data["scale"].toDouble(), mask_grad);
    return {grad_query, grad_key, grad_value, mask_grad ? grad_mask : at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_forward_autograd(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, double dropout_p, bool is_causal, double scale) {
  // Checked here too: Function::apply reads the inputs' sizes before any
  // backend kernel could, which a nested tensor answers with an internal
  // error, and a sparse one would only meet the dispatcher's "no kernel".
  check_core_inputs("attention_forward", query, key, value, attn_mask, dropout_p, is_causal);
  auto outputs = AttentionFunction::apply(query, key, value, attn_mask, dropout_p, is_causal, scale);
  return {outputs[0], outputs[1], outputs[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(selfattn, Autograd, m) { m.impl("attention_forward", &attention_forward_autograd); }

}  // namespace selfattn
