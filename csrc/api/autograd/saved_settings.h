// The non-tensor arguments of a core-op call, carried from its forward to its
// backward in an autograd node. The tensors among the options are constants
// of the graph (int32 offsets, slopes without grad).
#pragma once

#include "api/core/attention_options.h"

namespace selfattn {

struct CallSettings {
  double dropout_p = 0.0;
  bool is_causal = false;
  double scale = 1.0;
  bool attn_mask_requires_grad = false;
  AttentionOptions options;
};

}  // namespace selfattn
