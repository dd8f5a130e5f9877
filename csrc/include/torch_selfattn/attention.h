// torch-selfattn's C++ API, for programs that use LibTorch without Python.
//
// The functions mirror the Python ones (torch_selfattn.scaled_dot_product_attention,
// varlen_attention, kv_cache_attention): same arguments, same defaults, same
// semantics, differentiable through C++ autograd, on every device the
// library has kernels for. They call the ops that the library registers with
// PyTorch's dispatcher (torch.ops.selfattn.*), so a call from C++ and one
// from Python run the same code. Link the library with CMake:
//
//   find_package(torch_selfattn REQUIRED)
//   target_link_libraries(app PRIVATE torch_selfattn::torch_selfattn)
//
// docs/cpp.md has the long form.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace torch_selfattn {

// A sliding window: query i sees key j when -right <= i + shift - j <= left,
// with shift as CausalAlignment says; -1 is no bound on that side.
struct Window {
  int64_t left = -1;
  int64_t right = -1;
};

// Where the causal mask and the window sit when L != S: top-left (shift 0,
// PyTorch's is_causal) or bottom-right (shift S - L, for KV-cache decoding
// and chunked prefill).
enum class CausalAlignment { TopLeft, BottomRight };

// The keyword-only extras of scaled_dot_product_attention and varlen_attention.
struct ScoreOptions {
  std::optional<Window> window;
  CausalAlignment causal_alignment = CausalAlignment::TopLeft;
  // (Hq) or (..., Hq): adds -slope * |i + shift - j| to the scores; no gradient.
  std::optional<at::Tensor> alibi_slopes;
  // Scores become softcap * tanh(score / softcap) (Gemma 2).
  std::optional<double> softcap;
  // (Hq): one logit per query head that joins each row's softmax
  // denominator with no value (attention sinks); gets a gradient.
  std::optional<at::Tensor> sinks;
};

// The keyword-only arguments of kv_cache_attention.
struct KVCacheOptions {
  bool is_causal = true;
  std::optional<double> scale;
  std::optional<Window> window;
  std::optional<at::Tensor> alibi_slopes;
  std::optional<double> softcap;
  std::optional<at::Tensor> sinks;
  // A paged cache: (B, max_blocks) integers, the blocks of each sequence in
  // order; key_cache and value_cache are then (num_blocks, block_size, H, E/Ev).
  std::optional<at::Tensor> block_table;
};

// softmax(query @ key^T * scale + attn_mask) @ value, like
// torch::scaled_dot_product_attention. query (N, ..., Hq, L, E), key
// (N, ..., H, S, E), value (N, ..., H, S, Ev); returns (N, ..., Hq, L, Ev).
at::Tensor scaled_dot_product_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                        const std::optional<at::Tensor>& attn_mask = std::nullopt,
                                        double dropout_p = 0.0, bool is_causal = false,
                                        std::optional<double> scale = std::nullopt, bool enable_gqa = false,
                                        const ScoreOptions& options = {});

// A packed batch of sequences of different lengths: query (total_q, Hq, E),
// key (total_k, H, E), value (total_k, H, Ev); sequence s owns query rows
// cu_seqlens_q[s] to cu_seqlens_q[s + 1] and key rows cu_seqlens_k[s] to
// cu_seqlens_k[s + 1]. Returns (total_q, Hq, Ev).
at::Tensor varlen_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                            const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                            int64_t max_seqlen_k, double dropout_p = 0.0, bool is_causal = false,
                            std::optional<double> scale = std::nullopt, const ScoreOptions& options = {});

// One decoding step against a KV cache: query (B, Hq, L, E), key_cache
// (B, H, S_max, E), value_cache (B, H, S_max, Ev); sequence b uses the first
// cache_seqlens[b] keys, and its queries are its last L positions.
// Returns (B, Hq, L, Ev).
at::Tensor kv_cache_attention(const at::Tensor& query, const at::Tensor& key_cache, const at::Tensor& value_cache,
                              const at::Tensor& cache_seqlens, const KVCacheOptions& options = {});

}  // namespace torch_selfattn
