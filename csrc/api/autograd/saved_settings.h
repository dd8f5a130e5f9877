// The non-tensor arguments of a core-op call, carried from an autograd
// Function's forward to its backward in saved_data. The tensors among the
// options are constants of the graph (int32 offsets, slopes without grad).
#pragma once

#include <torch/autograd.h>

#include "api/core/attention_options.h"

namespace selfattn {

struct CallSettings {
  double dropout_p = 0.0;
  bool is_causal = false;
  double scale = 1.0;
  bool attn_mask_requires_grad = false;
  AttentionOptions options;
};

void save_settings(torch::autograd::AutogradContext* ctx, const CallSettings& settings);
CallSettings saved_settings(torch::autograd::AutogradContext* ctx);

}  // namespace selfattn
