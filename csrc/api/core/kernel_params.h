// The translation of a core-op call's tensors into the plain parameter
// structs the kernels read (common/attention_params.h).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "api/core/attention_options.h"
#include "common/attention_params.h"

namespace selfattn {

// The options with the ALiBi slopes as the kernels read them: contiguous,
// in the accumulator type of `dtype`. Keep the result alive while the
// kernels run.
AttentionOptions kernel_options(const AttentionOptions& options, at::ScalarType dtype);

// The parameters of one call, all but the dropout seed and offset, which
// each backend keeps in its own way. `options` as kernel_options returns them.
AttentionParams make_params(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                            const std::optional<at::Tensor>& attn_mask, const at::Tensor& output,
                            const at::Tensor& logsumexp, double dropout_p, bool is_causal, double scale,
                            const AttentionOptions& options);

// The dropout seed and offset that attention_forward recorded in rng_state,
// which must be in host memory.
void read_dropout_state(const at::Tensor& rng_state, DropoutParams& dropout);

// A 4-D tensor as the kernels see it.
TensorView tensor_view(const at::Tensor& t);

ElementType element_type(at::ScalarType dtype);

}  // namespace selfattn
