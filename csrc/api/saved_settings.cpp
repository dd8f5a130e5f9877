#include "api/saved_settings.h"

namespace selfattn {

void save_settings(torch::autograd::AutogradContext* ctx, const CallSettings& s) {
  auto& d = ctx->saved_data;
  d["dropout_p"] = s.dropout_p;
  d["is_causal"] = s.is_causal;
  d["scale"] = s.scale;
  d["attn_mask_requires_grad"] = s.attn_mask_requires_grad;
  const AttentionOptions& o = s.options;
  d["window_left"] = o.window_left;
  d["window_right"] = o.window_right;
  d["bottom_right"] = o.bottom_right;
  d["alibi_slopes"] = o.alibi_slopes;
  d["softcap"] = o.softcap;
  d["cu_seqlens_q"] = o.cu_seqlens_q;
  d["cu_seqlens_k"] = o.cu_seqlens_k;
  d["seqused_k"] = o.seqused_k;
  d["max_seqlen_q"] = o.max_seqlen_q;
  d["max_seqlen_k"] = o.max_seqlen_k;
}

CallSettings saved_settings(torch::autograd::AutogradContext* ctx) {
  auto& d = ctx->saved_data;
  return CallSettings{
      d["dropout_p"].toDouble(), d["is_causal"].toBool(), d["scale"].toDouble(),
      d["attn_mask_requires_grad"].toBool(),
      attention_options(d["window_left"].toInt(), d["window_right"].toInt(), d["bottom_right"].toBool(),
                        d["alibi_slopes"].toOptional<at::Tensor>(), d["softcap"].toDouble(),
                        d["cu_seqlens_q"].toOptional<at::Tensor>(), d["cu_seqlens_k"].toOptional<at::Tensor>(),
                        d["seqused_k"].toOptional<at::Tensor>(), d["max_seqlen_q"].toInt(),
                        d["max_seqlen_k"].toInt())};
}

}  // namespace selfattn
