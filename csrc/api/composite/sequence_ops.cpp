// varlen_attention and kv_cache_attention: sequences of their own lengths,
// on top of the core ops (whose cu_seqlens and seqused_k options they fill).
// CompositeImplicitAutograd, like the SDPA composite: autograd differentiates
// them through attention_forward, and torch.compile traces through them
// without reading a length on the host.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "api/core/op_calls.h"
#include "api/composite/score_options.h"
#include "api/composite/sinks.h"

namespace selfattn {
namespace {

void check_rank(const char* op, const char* name, const at::Tensor& t, int64_t rank, const char* layout) {
  TORCH_CHECK(t.dim() == rank, op, ": ", name, " must be ", rank, "-D ", layout, ", got shape ", t.sym_sizes());
}

// Lengths and offsets as the core ops take them: int32.
at::Tensor as_int32(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(!at::isFloatingType(t.scalar_type()) && !at::isComplexType(t.scalar_type()) &&
                  t.scalar_type() != at::kBool,
              op, ": ", name, " must be an integer tensor, got ", t.scalar_type());
  return t.to(at::kInt).contiguous();
}

double default_scale(const at::Tensor& query, std::optional<double> scale) {
  return scale.has_value() ? *scale
                           : 1.0 / std::sqrt(static_cast<double>(query.sym_size(-1).guard_int(__FILE__, __LINE__)));
}

// The output (total_q, Hq, Ev) and its logsumexp (Hq, total_q).
std::tuple<at::Tensor, at::Tensor> varlen_attention_with_lse(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, double dropout_p, bool is_causal,
    std::optional<double> scale, at::OptionalIntArrayRef window, c10::string_view causal_alignment,
    const std::optional<at::Tensor>& alibi_slopes, std::optional<double> softcap,
    const std::optional<at::Tensor>& sinks) {
  constexpr const char* op = "varlen_attention";
  check_rank(op, "query", query, 3, "(total_q, Hq, E)");
  check_rank(op, "key", key, 3, "(total_k, H, E)");
  check_rank(op, "value", value, 3, "(total_k, H, Ev)");
  AttentionOptions options = score_options(op, window, causal_alignment, alibi_slopes, softcap);
  options.cu_seqlens_q = as_int32(op, "cu_seqlens_q", cu_seqlens_q);
  options.cu_seqlens_k = as_int32(op, "cu_seqlens_k", cu_seqlens_k);
  options.max_seqlen_q = max_seqlen_q;
  options.max_seqlen_k = max_seqlen_k;
  // (total, heads, dim) → (1, heads, total, dim): views, as the kernels read strides.
  auto packed = [](const at::Tensor& t) { return t.transpose(0, 1).unsqueeze(0); };
  auto [out, logsumexp, rng_state] =
      call_attention_forward(packed(query), packed(key), packed(value), std::nullopt,
                             dropout_p > 0.0 ? dropout_p : 0.0, is_causal, default_scale(query, scale), options);
  const AttentionResult result = join_sinks(op, {out, logsumexp}, sinks);
  return {result.output.squeeze(0).transpose(0, 1), result.logsumexp.squeeze(0)};
}

at::Tensor varlen_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                            const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                            int64_t max_seqlen_k, double dropout_p, bool is_causal, std::optional<double> scale,
                            at::OptionalIntArrayRef window, c10::string_view causal_alignment,
                            const std::optional<at::Tensor>& alibi_slopes, std::optional<double> softcap,
                            const std::optional<at::Tensor>& sinks) {
  return std::get<0>(varlen_attention_with_lse(query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                               max_seqlen_k, dropout_p, is_causal, scale, window, causal_alignment,
                                               alibi_slopes, softcap, sinks));
}

// The output (batch, Hq, L, Ev) and its logsumexp (batch, Hq, L).
// A paged cache (block_table given) holds blocks of shape (num_blocks,
// block_size, H, dim), the layout of vLLM and FlashAttention; the core op
// reads them as (num_blocks, H, block_size, dim) views.
std::tuple<at::Tensor, at::Tensor> kv_cache_attention_with_lse(
    const at::Tensor& query, const at::Tensor& key_cache, const at::Tensor& value_cache,
    const at::Tensor& cache_seqlens, bool is_causal, std::optional<double> scale, at::OptionalIntArrayRef window,
    const std::optional<at::Tensor>& alibi_slopes, std::optional<double> softcap,
    const std::optional<at::Tensor>& sinks, const std::optional<at::Tensor>& block_table) {
  constexpr const char* op = "kv_cache_attention";
  const bool paged = block_table.has_value();
  check_rank(op, "query", query, 4, "(batch, Hq, L, E)");
  check_rank(op, "key_cache", key_cache, 4,
             paged ? "(num_blocks, block_size, H, E) with block_table" : "(batch, H, S_max, E)");
  check_rank(op, "value_cache", value_cache, 4,
             paged ? "(num_blocks, block_size, H, Ev) with block_table" : "(batch, H, S_max, Ev)");
  AttentionOptions options = score_options(op, window, "bottom_right", alibi_slopes, softcap);
  check_rank(op, "cache_seqlens", cache_seqlens, 1, "(batch,)");
  TORCH_CHECK(cache_seqlens.sym_size(0) == query.sym_size(0), op, ": cache_seqlens must have one entry per sequence (",
              query.sym_size(0), "), got ", cache_seqlens.sym_size(0));
  options.seqused_k = as_int32(op, "cache_seqlens", cache_seqlens);
  at::Tensor key = key_cache, value = value_cache;
  if (paged) {
    check_rank(op, "block_table", *block_table, 2, "(batch, max_blocks)");
    options.block_table = as_int32(op, "block_table", *block_table);
    key = key_cache.transpose(1, 2);
    value = value_cache.transpose(1, 2);
  }
  // A decoding step (one query per sequence) whose rules are the same for
  // every query head: the G query heads that read one kv head go in as G
  // query rows of that head, so that its keys are read once, not G times.
  // With one query, bottom-right causal masking hides no cached key.
  const c10::SymInt batch = query.sym_size(0), q_heads = query.sym_size(1), kv_heads = key.sym_size(1);
  const bool pack_heads = options.window_left < 0 && options.window_right < 0 && !options.alibi_slopes.has_value() &&
                          TORCH_GUARD_OR_FALSE(query.sym_size(2).sym_eq(1)) &&
                          TORCH_GUARD_OR_FALSE(kv_heads.sym_gt(0)) && TORCH_GUARD_OR_FALSE(q_heads.sym_gt(kv_heads)) &&
                          TORCH_GUARD_OR_FALSE((q_heads % kv_heads).sym_eq(0));
  const at::Tensor q =
      pack_heads ? query.reshape_symint({batch, kv_heads, q_heads / kv_heads, query.sym_size(3)}) : query;
  auto [out, logsumexp, rng_state] = call_attention_forward(q, key, value, std::nullopt, 0.0, is_causal && !pack_heads,
                                                            default_scale(query, scale), options);
  if (pack_heads) {
    out = out.reshape_symint({batch, q_heads, 1, out.sym_size(3)});
    logsumexp = logsumexp.reshape_symint({batch, q_heads, 1});
  }
  const AttentionResult result = join_sinks(op, {out, logsumexp}, sinks);
  return {result.output, result.logsumexp};
}

at::Tensor kv_cache_attention(const at::Tensor& query, const at::Tensor& key_cache, const at::Tensor& value_cache,
                              const at::Tensor& cache_seqlens, bool is_causal, std::optional<double> scale,
                              at::OptionalIntArrayRef window, const std::optional<at::Tensor>& alibi_slopes,
                              std::optional<double> softcap, const std::optional<at::Tensor>& sinks,
                              const std::optional<at::Tensor>& block_table) {
  return std::get<0>(kv_cache_attention_with_lse(query, key_cache, value_cache, cache_seqlens, is_causal, scale, window,
                                                 alibi_slopes, softcap, sinks, block_table));
}

}  // namespace

TORCH_LIBRARY_IMPL(selfattn, CompositeImplicitAutograd, m) {
  m.impl("varlen_attention", &varlen_attention);
  m.impl("kv_cache_attention", &kv_cache_attention);
  m.impl("varlen_attention.with_lse", &varlen_attention_with_lse);
  m.impl("kv_cache_attention.with_lse", &kv_cache_attention_with_lse);
}

}  // namespace selfattn
