// torch.nn.functional.scaled_dot_product_attention's semantics on top of the
// core ops. PyTorch's reference path is a pair of broadcasting matmuls, so its
// inputs may have any number of batch dims, broadcast against each other, and
// a mask that broadcasts to the scores. This file reduces all of that to the
// 4-D (batch, heads, length, dim) form of attention_forward, with views where
// it can, and leaves the gradient of every reshaping to autograd.
//
// Registered as CompositeImplicitAutograd: it is differentiable through the
// autograd kernel of attention_forward, and torch.compile traces through it.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <string>

#include "api/core/op_calls.h"
#include "api/composite/score_options.h"
#include "api/composite/sinks.h"

namespace selfattn {
namespace {

using SymShape = c10::SymDimVector;

constexpr const char* kOp = "scaled_dot_product_attention";

SymShape slice(c10::SymIntArrayRef sizes, int64_t begin, int64_t end) {
  return SymShape(sizes.begin() + begin, sizes.begin() + end);
}

SymShape concat(SymShape a, std::initializer_list<c10::SymInt> tail) {
  a.insert(a.end(), tail.begin(), tail.end());
  return a;
}

c10::SymInt product(const SymShape& shape) {
  c10::SymInt p = 1;
  for (const auto& s : shape) p = p * s;
  return p;
}

// PyTorch's wording for these errors, which our messages carry too, so that
// code matching PyTorch's messages matches ours.
std::string size_mismatch(const c10::SymInt& a, const c10::SymInt& b, int64_t dim) {
  return c10::str("The size of tensor a (", a, ") must match the size of tensor b (", b,
                  ") at non-singleton dimension ", dim);
}

std::string dim_out_of_range(int64_t dims, int64_t dim) {
  return c10::str("Dimension out of range (expected to be in range of [", -dims, ", ", dims - 1, "], but got ", dim,
                  ")");
}

// Broadcasts two shapes (aligned at the right) as matmul broadcasts its batch
// dims, naming both arguments when they do not fit.
SymShape broadcast(const SymShape& a, const char* a_name, const SymShape& b, const char* b_name) {
  const size_t n = std::max(a.size(), b.size());
  SymShape out(n, 1);
  for (size_t i = 0; i < n; ++i) {
    const c10::SymInt x = i < n - a.size() ? c10::SymInt(1) : a[i - (n - a.size())];
    const c10::SymInt y = i < n - b.size() ? c10::SymInt(1) : b[i - (n - b.size())];
    // A size not known to be 1 (an unbacked, data-dependent one) is taken
    // as not 1 and must equal the other: broadcasting it would need a guard.
    const bool x_one = TORCH_GUARD_OR_FALSE(x.sym_eq(1)), y_one = TORCH_GUARD_OR_FALSE(y.sym_eq(1));
    TORCH_SYM_CHECK(c10::SymBool(x_one || y_one).sym_or(x.sym_eq(y)), kOp, ": the batch dims of ", a_name, " ",
                    c10::SymIntArrayRef(a), " and ", b_name, " ", c10::SymIntArrayRef(b),
                    " do not broadcast (for fewer key/value heads than query heads, pass enable_gqa=True). ",
                    size_mismatch(x, y, static_cast<int64_t>(i)));
    out[i] = x_one ? y : x;
  }
  return out;
}

void check_arguments(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                     const std::optional<at::Tensor>& attn_mask, double dropout_p, bool is_causal) {
  for (const auto& [name, t] : {std::pair{"query", &query}, {"key", &key}, {"value", &value}}) {
    TORCH_CHECK(!t->is_nested(), kOp, ": ", name, " is a nested tensor, which torch_selfattn does not take");
    TORCH_CHECK(t->layout() == at::kStrided, kOp, ": ", name, " must be a dense (strided) tensor, got layout ",
                t->layout());
    TORCH_CHECK(t->dim() >= 2, kOp, ": ", name, " must be at least 2-D (..., length, dim), got shape ",
                t->sym_sizes(), ". Expected query, key, and value to all be  at least 2 dimensional, but got query.dim: ",
                query.dim(), " key.dim: ", key.dim(), " and value.dim: ", value.dim(), " instead.");
    TORCH_CHECK_NOT_IMPLEMENTED(!t->is_complex(), kOp, ": ", name, " is complex (", t->scalar_type(),
                                "); attention is defined for float16, bfloat16, float32 and float64");
    const auto dtype = t->scalar_type();
    TORCH_CHECK_NOT_IMPLEMENTED(!at::isFloat8Type(dtype), kOp, ": ", name, " is ", dtype,
                                "; attention is defined for float16, bfloat16, float32 and float64");
    TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kDouble, kOp,
                ": ", name, " must be float16, bfloat16, float32 or float64, got ", dtype);
  }
  TORCH_CHECK(key.scalar_type() == query.scalar_type() && value.scalar_type() == query.scalar_type(), kOp,
              ": query, key and value must have the same dtype, got query ", query.scalar_type(), ", key ",
              key.scalar_type(), " and value ", value.scalar_type(),
              ". Expected query, key, and value to have the same dtype, but got query.dtype: ", query.dtype(),
              " key.dtype: ", key.dtype(), " and value.dtype: ", value.dtype(), " instead.");
  TORCH_CHECK(key.device() == query.device() && value.device() == query.device(), kOp,
              ": query, key and value must be on the same device, got query on ", query.device(), ", key on ",
              key.device(), " and value on ", value.device(),
              ". Expected query, key, and value to have the same device type, but got query.device: ", query.device(),
              " key.device: ", key.device(), " and value.device: ", value.device(), " instead.");
  TORCH_CHECK(key.sym_size(-1) == query.sym_size(-1), kOp,
              ": key's last dim must equal query's (the embedding dim E), got key ", key.sym_sizes(), " and query ",
              query.sym_sizes());
  TORCH_CHECK(value.sym_size(-2) == key.sym_size(-2), kOp,
              ": value's dim -2 must equal key's (the key length S), got value ", value.sym_sizes(), " and key ",
              key.sym_sizes());
  // As PyTorch's default path (and F.dropout): a negative or NaN p raises.
  // p = 1 drops everything, as in PyTorch.
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p <= 1.0, kOp, ": dropout_p must be a probability in [0, 1], got ",
              dropout_p, ". dropout probability has to be between 0 and 1, but got ", dropout_p);
  if (!attn_mask.has_value()) return;

  const at::Tensor& mask = *attn_mask;
  TORCH_CHECK(!is_causal, kOp, ": attn_mask and is_causal=True cannot be given together; fold the causal mask "
              "into attn_mask instead. Explicit attn_mask should not be set when is_causal=True");
  TORCH_CHECK(!mask.is_nested() && mask.layout() == at::kStrided, kOp, ": attn_mask must be a dense (strided) tensor");
  TORCH_CHECK_INDEX(mask.dim() >= 2, kOp, ": attn_mask must be at least 2-D (..., L, S), got shape ",
                    mask.sym_sizes(), ". ", dim_out_of_range(mask.dim(), -2));
  TORCH_CHECK(mask.device() == query.device(), kOp, ": attn_mask must be on query's device (", query.device(),
              "), got ", mask.device());
  TORCH_CHECK(mask.scalar_type() == at::kBool || mask.scalar_type() == at::kFloat ||
                  mask.scalar_type() == query.scalar_type(),
              kOp, ": attn_mask must be bool, float32 or query's dtype (", query.scalar_type(), "), got ",
              mask.scalar_type(),
              ". Expected attn_mask dtype to be bool or float or to match query dtype, but got attn_mask.dtype: ",
              mask.dtype(), " and  query.dtype: ", query.dtype(), " instead.");
}

// The mask as attention_forward takes it: 4-D, each dim 1 or that of
// (batch, Hq, L, S). Size-1 dims stay size 1, so a small mask stays small;
// only a mask that broadcasts over some leading batch dims but not all of
// them is expanded over them. PyTorch adds the mask to the scores Q·Kᵀ in
// place, so the mask must broadcast to the scores' own batch dims (those of
// query and key), not to wider ones that value brings.
at::Tensor mask_as_4d(const at::Tensor& mask, const SymShape& score_batch, const SymShape& out_batch,
                      const c10::SymInt& L, const c10::SymInt& S) {
  const SymShape own_scores = concat(score_batch, {L, S});
  if (mask.dim() > static_cast<int64_t>(own_scores.size())) {
    // PyTorch adds the mask to the scores in place, whose shape cannot grow.
    SymShape grown = slice(mask.sym_sizes(), 0, mask.dim() - own_scores.size());
    grown.insert(grown.end(), own_scores.begin(), own_scores.end());
    TORCH_CHECK(false, kOp, ": attn_mask of shape ", mask.sym_sizes(), " has more dims than the attention scores (",
                c10::SymIntArrayRef(own_scores), "). output with shape ", c10::SymIntArrayRef(own_scores),
                " doesn't match the broadcast shape ", c10::SymIntArrayRef(grown));
  }
  for (int64_t d = 1; d <= mask.dim(); ++d) {
    const c10::SymInt& m = mask.sym_size(-d);
    const c10::SymInt& score = own_scores[own_scores.size() - d];
    TORCH_SYM_CHECK(c10::SymBool(TORCH_GUARD_OR_FALSE(m.sym_eq(1))).sym_or(m.sym_eq(score)), kOp,
                    ": attn_mask of shape ", mask.sym_sizes(), " does not broadcast to the attention scores (..., Hq, L, "
                    "S) = ", c10::SymIntArrayRef(own_scores), ". ",
                    size_mismatch(score, m, static_cast<int64_t>(own_scores.size()) - d));
  }
  const SymShape scores = concat(out_batch, {L, S});
  SymShape padded(scores.size() - mask.dim(), 1);
  for (const auto& s : mask.sym_sizes()) padded.push_back(s);
  at::Tensor m = mask.view_symint(padded);
  // Leading dims (all but heads, L, S) fold into one batch dim.
  const int64_t lead = static_cast<int64_t>(scores.size()) - 3;
  bool all_one = true, all_full = true;
  for (int64_t d = 0; d < lead; ++d) {
    // Decided without a guard on a data-dependent size: unknown is "no",
    // and the expand below is right either way.
    all_one = all_one && TORCH_GUARD_OR_FALSE(padded[d].sym_eq(1));
    all_full = all_full && TORCH_GUARD_OR_FALSE(padded[d].sym_eq(scores[d]));
  }
  SymShape tail = slice(padded, lead, padded.size());
  if (!all_one && !all_full) {
    m = m.expand_symint(concat(slice(scores, 0, lead), {tail[0], tail[1], tail[2]}));
  }
  const c10::SymInt batch = all_one ? c10::SymInt(1) : product(slice(scores, 0, lead));
  return m.reshape_symint({batch, tail[0], tail[1], tail[2]});
}

// Folds the batch dims of a (..., heads, length, dim) tensor into one.
at::Tensor as_4d(const at::Tensor& t, const SymShape& batch, const c10::SymInt& heads) {
  const SymShape target = concat(batch, {heads, t.sym_size(-2), t.sym_size(-1)});
  return t.expand_symint(target).reshape_symint(
      {product(batch), heads, t.sym_size(-2), t.sym_size(-1)});
}

// ALiBi slopes of shape (Hq,) pass as they are; (..., Hq) broadcast to the
// output's batch dims and fold into (batch, Hq) as the batch dims do.
at::Tensor slopes_as_2d(const at::Tensor& slopes, const SymShape& outer, const c10::SymInt& q_heads) {
  TORCH_CHECK(slopes.dim() >= 1 && slopes.sym_size(-1) == q_heads, kOp, ": alibi_slopes must have shape (Hq,) = (",
              q_heads, ",) or (..., Hq) broadcasting to the batch dims, got ", slopes.sym_sizes());
  if (slopes.dim() == 1) return slopes;
  const SymShape target = concat(outer, {q_heads});
  TORCH_CHECK(slopes.dim() <= static_cast<int64_t>(target.size()), kOp, ": alibi_slopes of shape ",
              slopes.sym_sizes(), " has more dims than the batch dims and heads ", c10::SymIntArrayRef(target));
  for (int64_t d = 2; d <= slopes.dim(); ++d) {
    const c10::SymInt& size = slopes.sym_size(-d);
    TORCH_CHECK(size == 1 || size == target[target.size() - d], kOp, ": alibi_slopes of shape ", slopes.sym_sizes(),
                " does not broadcast to the batch dims and heads ", c10::SymIntArrayRef(target));
  }
  return slopes.expand_symint(target).reshape_symint({product(outer), q_heads});
}

// The output, (..., Hq, L, Ev), and its logsumexp, (..., Hq, L).
std::tuple<at::Tensor, at::Tensor> attention_with_lse(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, double dropout_p, bool is_causal, std::optional<double> scale,
    bool enable_gqa, at::OptionalIntArrayRef window, c10::string_view causal_alignment,
    const std::optional<at::Tensor>& alibi_slopes, std::optional<double> softcap,
    const std::optional<at::Tensor>& sinks) {
  check_arguments(query, key, value, attn_mask, dropout_p, is_causal);
  AttentionOptions options = score_options(kOp, window, causal_alignment, alibi_slopes, softcap);
  const c10::SymInt L = query.sym_size(-2), S = key.sym_size(-2);

  // The output's batch dims: those of q, k and v broadcast together. With
  // enable_gqa the head dim (-3) is exempt: key and value may have fewer
  // heads, each count dividing query's.
  at::Tensor k = key, v = value;
  SymShape outer, score_batch;  // score_batch: the batch dims of Q·Kᵀ alone
  c10::SymInt q_heads, kv_heads;
  if (enable_gqa) {
    for (const auto& [name, t] : {std::pair{"query", &query}, {"key", &key}, {"value", &value}}) {
      TORCH_CHECK_INDEX(t->dim() >= 3, kOp, ": with enable_gqa, ", name,
                        " must be at least 3-D (..., heads, length, dim), got shape ", t->sym_sizes(), ". ",
                        dim_out_of_range(t->dim(), -3));
    }
    q_heads = query.sym_size(-3);
    for (const auto& [name, t] : {std::pair{"key", &key}, {"value", &value}}) {
      const c10::SymInt heads = t->sym_size(-3);
      TORCH_CHECK(heads > 0 && q_heads % heads == 0, kOp, ": with enable_gqa, ", name, "'s head count (dim -3, ",
                  heads, ") must divide query's (", q_heads,
                  "). Number of heads in key and value must divide the number of heads in query");
    }
    outer = broadcast(broadcast(slice(query.sym_sizes(), 0, query.dim() - 3), "query",
                                slice(key.sym_sizes(), 0, key.dim() - 3), "key"),
                      "query and key", slice(value.sym_sizes(), 0, value.dim() - 3), "value");
    kv_heads = key.sym_size(-3);
    if (value.sym_size(-3) != kv_heads) {
      // Key and value grouped differently: give both query's head count.
      k = key.repeat_interleave_symint(q_heads / kv_heads, -3);
      v = value.repeat_interleave_symint(q_heads / value.sym_size(-3), -3);
      kv_heads = q_heads;
    }
    score_batch = concat(broadcast(slice(query.sym_sizes(), 0, query.dim() - 3), "query",
                                   slice(key.sym_sizes(), 0, key.dim() - 3), "key"),
                         {q_heads});
  } else {
    score_batch = broadcast(slice(query.sym_sizes(), 0, query.dim() - 2), "query",
                            slice(key.sym_sizes(), 0, key.dim() - 2), "key");
    SymShape batch = broadcast(score_batch, "query and key", slice(value.sym_sizes(), 0, value.dim() - 2), "value");
    if (batch.empty()) batch.push_back(1);  // 2-D inputs: one batch of one head
    q_heads = kv_heads = batch.back();
    outer = slice(batch, 0, batch.size() - 1);
  }
  const SymShape out_batch = concat(outer, {q_heads});

  const double softmax_scale =
      scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(query.sym_size(-1).guard_int(__FILE__, __LINE__)));
  std::optional<at::Tensor> mask4;
  if (attn_mask.has_value()) mask4 = mask_as_4d(*attn_mask, score_batch, out_batch, L, S);
  if (options.alibi_slopes.has_value()) options.alibi_slopes = slopes_as_2d(*options.alibi_slopes, outer, q_heads);

  auto [out, logsumexp, rng_state] =
      call_attention_forward(as_4d(query, outer, q_heads), as_4d(k, outer, kv_heads), as_4d(v, outer, kv_heads), mask4,
                             dropout_p, is_causal, softmax_scale, options);
  const AttentionResult result = join_sinks(kOp, {out, logsumexp}, sinks);
  SymShape out_shape = concat(outer, {q_heads, L, value.sym_size(-1)});
  // 2-D and broadcast-free 3-D inputs give outputs of their own rank.
  const int64_t out_rank = std::max({query.dim(), key.dim(), value.dim()});
  out_shape.erase(out_shape.begin(), out_shape.end() - out_rank);
  const SymShape lse_shape = slice(out_shape, 0, out_shape.size() - 1);
  return {result.output.view_symint(out_shape), result.logsumexp.view_symint(lse_shape)};
}

at::Tensor scaled_dot_product_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                        const std::optional<at::Tensor>& attn_mask, double dropout_p,
                                        bool is_causal, std::optional<double> scale, bool enable_gqa,
                                        at::OptionalIntArrayRef window, c10::string_view causal_alignment,
                                        const std::optional<at::Tensor>& alibi_slopes, std::optional<double> softcap,
                                        const std::optional<at::Tensor>& sinks) {
  return std::get<0>(attention_with_lse(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, window,
                                        causal_alignment, alibi_slopes, softcap, sinks));
}

}  // namespace

TORCH_LIBRARY_IMPL(selfattn, CompositeImplicitAutograd, m) {
  m.impl("scaled_dot_product_attention", &scaled_dot_product_attention);
  m.impl("scaled_dot_product_attention.with_lse", &attention_with_lse);
}

}  // namespace selfattn
