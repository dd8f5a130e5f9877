#include "api/autograd/forward_tangent.h"

#include <ATen/ATen.h>

#include <limits>

#include "api/core/op_outputs.h"

namespace selfattn {
namespace {

// The score rules of common/score_rules.h as an additive (Hq or 1, L, S)
// bias: −inf where causality or a window hides a key, −slope·|i + shift − j|
// for ALiBi. d = i + shift − j is a query's distance to a key.
at::Tensor score_bias(const AttentionOptions& o, bool is_causal, int64_t L, int64_t S, const at::TensorOptions& acc) {
  const bool hides = is_causal || o.window_left >= 0 || o.window_right >= 0;
  if (!hides && !o.alibi_slopes.has_value()) return at::Tensor();
  const int64_t shift = o.bottom_right ? S - L : 0;
  const at::Tensor d = (at::arange(L, acc.dtype(at::kLong)).unsqueeze(1) + shift) - at::arange(S, acc.dtype(at::kLong));
  at::Tensor bias = at::zeros({1, 1, L, S}, acc);
  if (o.alibi_slopes.has_value()) {
    const at::Tensor& slopes = *o.alibi_slopes;  // (Hq) or (batch, Hq)
    const at::Tensor per_head = slopes.dim() == 1 ? slopes.view({1, -1, 1, 1}) : slopes.view({slopes.size(0), -1, 1, 1});
    bias = bias - per_head.to(acc) * d.abs().to(acc);
  }
  if (hides) {
    const int64_t right_reach = is_causal ? 0 : o.window_right;
    at::Tensor hidden = at::zeros({L, S}, acc.dtype(at::kBool));
    if (o.window_left >= 0) hidden = hidden.logical_or(d > o.window_left);
    if (right_reach >= 0) hidden = hidden.logical_or(d < -right_reach);
    bias = bias.masked_fill(hidden, -std::numeric_limits<double>::infinity());
  }
  return bias;
}

}  // namespace

OutputTangents attention_forward_tangent(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                     const std::optional<at::Tensor>& attn_mask, const CallSettings& s,
                                     const InputTangents& t) {
  TORCH_CHECK_NOT_IMPLEMENTED(!s.options.has_sequences(),
                              "attention_forward: forward-mode AD (jvp) is not implemented for packed sequences "
                              "(varlen_attention) or a KV cache (kv_cache_attention)");
  TORCH_CHECK_NOT_IMPLEMENTED(s.dropout_p == 0.0,
                              "attention_forward: forward-mode AD (jvp) is not implemented with dropout_p > 0");
  const at::ScalarType acc = accumulator_type(query.scalar_type());
  const int64_t group = query.size(1) / std::max<int64_t>(key.size(1), 1);
  // Key and value heads repeated to query's: P is formed whole anyway.
  auto per_query_head = [&](const at::Tensor& x) { return x.to(acc).repeat_interleave(group, 1); };
  const at::Tensor q = query.to(acc), k = per_query_head(key), v = per_query_head(value);

  const at::Tensor product = at::matmul(q * s.scale, k.transpose(-2, -1));
  at::Tensor scores = product, capped;
  if (s.options.softcap > 0.0) {
    capped = at::tanh(product / s.options.softcap);
    scores = capped * s.options.softcap;
  }
  const at::Tensor bias = score_bias(s.options, s.is_causal, q.size(2), k.size(2), q.options());
  if (bias.defined()) scores = scores + bias;
  if (attn_mask.has_value()) {
    scores = attn_mask->scalar_type() == at::kBool
                 ? scores.masked_fill(attn_mask->logical_not(), -std::numeric_limits<double>::infinity())
                 : scores + attn_mask->to(acc);
  }
  // A row that sees no key has probabilities 0, as the kernels' output is 0 there.
  const at::Tensor probs = at::_safe_softmax(scores, -1);

  at::Tensor score_tangent;
  auto add = [](at::Tensor& sum, const at::Tensor& term) { sum = sum.defined() ? sum + term : term; };
  if (t.query.defined()) add(score_tangent, at::matmul(t.query.to(acc) * s.scale, k.transpose(-2, -1)));
  if (t.key.defined()) add(score_tangent, at::matmul(q * s.scale, per_query_head(t.key).transpose(-2, -1)));
  if (score_tangent.defined() && capped.defined()) score_tangent = score_tangent * (1.0 - capped.square());
  if (t.attn_mask.defined() && attn_mask.has_value() && attn_mask->is_floating_point()) {
    add(score_tangent, t.attn_mask.to(acc));
  }
  at::Tensor out_tangent, lse_tangent;
  if (score_tangent.defined()) {
    const at::Tensor weighted = probs * score_tangent;
    lse_tangent = weighted.sum(-1, /*keepdim=*/true);
    const at::Tensor prob_tangent = weighted - probs * lse_tangent;
    add(out_tangent, at::matmul(prob_tangent, v));
  }
  if (t.value.defined()) add(out_tangent, at::matmul(probs, per_query_head(t.value)));
  const auto out_shape = std::vector<int64_t>{query.size(0), query.size(1), query.size(2), value.size(3)};
  const auto lse_shape = std::vector<int64_t>{query.size(0), query.size(1), query.size(2)};
  // The mask may broadcast the scores over more batches than query has.
  return OutputTangents{
      out_tangent.defined() ? out_tangent.expand(out_shape).to(query.scalar_type())
                            : at::zeros(out_shape, query.options()),
      lse_tangent.defined() ? lse_tangent.squeeze(-1).expand(lse_shape).contiguous()
                            : at::zeros(lse_shape, query.options().dtype(acc))};
}

}  // namespace selfattn
