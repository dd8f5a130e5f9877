// The C++ API (include/torch_selfattn/attention.h): each function calls its op
// through the dispatcher, as torch.ops.selfattn.* does from Python. Being
// defined in the library, these functions are what a C++ program links
// against, so the linker keeps the library, and with it the static
// registration of the ops, even with -Wl,--as-needed.
#include "torch_selfattn/attention.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <array>

namespace torch_selfattn {
namespace {

using OptionalTensor = std::optional<at::Tensor>;

// The typed handle of selfattn::<name>; Signature must match its schema in csrc/ops.cpp.
template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// The schema's `int[]? window`: a view of `storage`, which outlives the call.
at::OptionalIntArrayRef window_arg(const std::optional<Window>& window, std::array<int64_t, 2>& storage) {
  if (!window) return std::nullopt;
  storage = {window->left, window->right};
  return at::IntArrayRef(storage);
}

c10::string_view alignment_arg(CausalAlignment alignment) {
  return alignment == CausalAlignment::BottomRight ? "bottom_right" : "top_left";
}

}  // namespace

at::Tensor scaled_dot_product_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                        const std::optional<at::Tensor>& attn_mask, double dropout_p, bool is_causal,
                                        std::optional<double> scale, bool enable_gqa, const ScoreOptions& options) {
  static const auto handle =
      op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptionalTensor&, double, bool,
                    std::optional<double>, bool, at::OptionalIntArrayRef, c10::string_view, const OptionalTensor&,
                    std::optional<double>, const OptionalTensor&)>("selfattn::scaled_dot_product_attention");
  std::array<int64_t, 2> window;
  return handle.call(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                     window_arg(options.window, window), alignment_arg(options.causal_alignment),
                     options.alibi_slopes, options.softcap, options.sinks);
}

at::Tensor varlen_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                            const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                            int64_t max_seqlen_k, double dropout_p, bool is_causal, std::optional<double> scale,
                            const ScoreOptions& options) {
  static const auto handle =
      op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                    int64_t, int64_t, double, bool, std::optional<double>, at::OptionalIntArrayRef, c10::string_view,
                    const OptionalTensor&, std::optional<double>, const OptionalTensor&)>(
          "selfattn::varlen_attention");
  std::array<int64_t, 2> window;
  return handle.call(query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, is_causal,
                     scale, window_arg(options.window, window), alignment_arg(options.causal_alignment),
                     options.alibi_slopes, options.softcap, options.sinks);
}

at::Tensor kv_cache_attention(const at::Tensor& query, const at::Tensor& key_cache, const at::Tensor& value_cache,
                              const at::Tensor& cache_seqlens, const KVCacheOptions& options) {
  static const auto handle =
      op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool,
                    std::optional<double>, at::OptionalIntArrayRef, const OptionalTensor&, std::optional<double>,
                    const OptionalTensor&, const OptionalTensor&)>("selfattn::kv_cache_attention");
  std::array<int64_t, 2> window;
  return handle.call(query, key_cache, value_cache, cache_seqlens, options.is_causal, options.scale,
                     window_arg(options.window, window), options.alibi_slopes, options.softcap, options.sinks,
                     options.block_table);
}

}  // namespace torch_selfattn
