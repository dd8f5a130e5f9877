#include "api/composite/sinks.h"

#include <ATen/ATen.h>

namespace selfattn {

AttentionResult join_sinks(const char* op, AttentionResult result, const std::optional<at::Tensor>& sinks) {
  if (!sinks.has_value()) return result;
  const at::Tensor& s = *sinks;
  const c10::SymInt q_heads = result.output.sym_size(1);
  TORCH_CHECK(s.dim() == 1 && s.sym_size(0) == q_heads, op, ": sinks must have shape (Hq,) = (", q_heads,
              ",), one logit per query head, got shape ", s.sym_sizes());
  TORCH_CHECK(s.is_floating_point(), op, ": sinks must be a floating-point tensor, got ", s.scalar_type());
  TORCH_CHECK(s.device() == result.output.device(), op, ": sinks must be on query's device (",
              result.output.device(), "), got ", s.device());
  const at::Tensor& lse = result.logsumexp;
  const at::Tensor sink = s.to(lse.scalar_type()).view({1, -1, 1});
  const at::Tensor joined = at::logaddexp(lse, sink);
  // exp(lse − joined) = sigmoid(lse − sink): 0 on a row that sees no key.
  const at::Tensor weight = at::exp(lse - joined).unsqueeze(-1);
  const at::Tensor output = (result.output.to(lse.scalar_type()) * weight).to(result.output.scalar_type());
  return {output, joined};
}

}  // namespace selfattn
