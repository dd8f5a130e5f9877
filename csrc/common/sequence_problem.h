// One sequence of a call with sequences of their own lengths (packed
// batches, KV caches), as a call of its own: batch 1, the sequence's
// lengths, and every pointer moved to the sequence's first row. The kernels
// then run on it unchanged.
#pragma once

#include "common/attention_params.h"

namespace selfattn {

AttentionParams sequence_problem(const AttentionParams& p, int64_t s);
AttentionBackwardParams sequence_problem(const AttentionBackwardParams& bp, int64_t s);

}  // namespace selfattn
