// The extras that torch_selfattn's functions take beyond PyTorch's SDPA
// (window, causal_alignment, alibi_slopes, softcap; SELFATTN_SCORE_OPTIONS
// in csrc/ops.cpp), checked and turned into the core ops' options.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>

#include "api/core/attention_options.h"

namespace selfattn {

AttentionOptions score_options(const char* op, at::OptionalIntArrayRef window, std::string_view causal_alignment,
                               const std::optional<at::Tensor>& alibi_slopes, std::optional<double> softcap);

}  // namespace selfattn
