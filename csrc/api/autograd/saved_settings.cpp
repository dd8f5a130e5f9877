#include "api/autograd/saved_settings.h"

namespace selfattn {

void save_settings(torch::autograd::AutogradContext* ctx, const CallSettings& s) {
  auto& d = ctx->saved_data;
  d["dropout_p"] = s.dropout_p;
  d["is_causal"] = s.is_causal;
  d["scale"] = s.scale;
  d["attn_mask_requires_grad"] = s.attn_mask_requires_grad;
  const AttentionOptions& options = s.options;
  SELFATTN_CORE_OPTIONS(SELFATTN_OPTION_SAVE)
}

CallSettings saved_settings(torch::autograd::AutogradContext* ctx) {
  auto& d = ctx->saved_data;
  AttentionOptions options;
  SELFATTN_CORE_OPTIONS(SELFATTN_OPTION_LOAD)
  return CallSettings{d["dropout_p"].toDouble(), d["is_causal"].toBool(), d["scale"].toDouble(),
                      d["attn_mask_requires_grad"].toBool(), options};
}

}  // namespace selfattn
