// Entry points of the CPU kernels. They read plain parameter structs, so the
// torch-facing code (csrc/api/) is the only place that knows about tensors.
#pragma once

#include "common/attention_params.h"

namespace selfattn::cpu {

// Writes params.out and params.logsumexp.
void attention_forward(const AttentionParams& params);

// Writes grad_q, grad_k, grad_v and, when grad_mask.data is set, grad_mask.
void attention_backward(const AttentionBackwardParams& params);

}  // namespace selfattn::cpu
