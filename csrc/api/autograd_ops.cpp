// Autograd for attention_forward, in C++, so that the op is differentiable
// from LibTorch with no Python in the loop. The backward recomputes the
// probabilities from the saved logsumexp (and the dropout mask from the saved
// rng_state): nothing of size L×S is kept between the passes.
#include <torch/autograd.h>
#include <torch/library.h>

#include "api/op_calls.h"

namespace selfattn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The options travel from the forward to the backward in saved_data; their
// tensors are constants of the graph (int32 offsets, slopes without grad).
void save_options(AutogradContext* ctx, const AttentionOptions& o) {
  ctx->saved_data["window_left"] = o.window_left;
  ctx->saved_data["window_right"] = o.window_right;
  ctx->saved_data["bottom_right"] = o.bottom_right;
  ctx->saved_data["alibi_slopes"] = o.alibi_slopes;
  ctx->saved_data["softcap"] = o.softcap;
  ctx->saved_data["cu_seqlens_q"] = o.cu_seqlens_q;
  ctx->saved_data["cu_seqlens_k"] = o.cu_seqlens_k;
  ctx->saved_data["seqused_k"] = o.seqused_k;
  ctx->saved_data["max_seqlen_q"] = o.max_seqlen_q;
  ctx->saved_data["max_seqlen_k"] = o.max_seqlen_k;
}

AttentionOptions saved_options(AutogradContext* ctx) {
  auto& d = ctx->saved_data;
  return attention_options(d["window_left"].toInt(), d["window_right"].toInt(), d["bottom_right"].toBool(),
                           d["alibi_slopes"].toOptional<at::Tensor>(), d["softcap"].toDouble(),
                           d["cu_seqlens_q"].toOptional<at::Tensor>(), d["cu_seqlens_k"].toOptional<at::Tensor>(),
                           d["seqused_k"].toOptional<at::Tensor>(), d["max_seqlen_q"].toInt(),
                           d["max_seqlen_k"].toInt());
}

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
    ctx->saved_data["dropout_p"] = dropout_p;
    ctx->saved_data["is_causal"] = is_causal;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["mask_grad"] = mask_grad;
    save_options(ctx, options);
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
                      ctx->saved_data["scale"].toDouble(), mask_grad, saved_options(ctx));
    return {grad_query, grad_key, grad_value, mask_grad ? grad_mask : at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

using Optional = const std::optional<at::Tensor>&;

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_forward_autograd(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value, Optional attn_mask, double dropout_p,
    bool is_causal, double scale, int64_t window_left, int64_t window_right, bool bottom_right, Optional alibi_slopes,
    double softcap, Optional cu_seqlens_q, Optional cu_seqlens_k, Optional seqused_k, int64_t max_seqlen_q,
    int64_t max_seqlen_k) {
  auto outputs = AttentionFunction::apply(
      query, key, value, attn_mask, dropout_p, is_causal, scale,
      attention_options(window_left, window_right, bottom_right, alibi_slopes, softcap, cu_seqlens_q, cu_seqlens_k,
                        seqused_k, max_seqlen_q, max_seqlen_k));
  return {outputs[0], outputs[1], outputs[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(selfattn, Autograd, m) { m.impl("attention_forward", &attention_forward_autograd); }

}  // namespace selfattn
