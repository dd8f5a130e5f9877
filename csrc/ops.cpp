// The op schemas, in one place. Kernels are registered per backend:
//   CPU      csrc/cpu/cpu_ops.cpp
//   CUDA     csrc/cuda/cuda_ops.cpp
//   Meta     csrc/api/core/meta_ops.cpp
//   Autograd csrc/api/autograd/autograd_ops.cpp
// and Autocast (CPU and CUDA) for the user-facing ops: csrc/api/autocast/autocast_ops.cpp.
// cpu_tile_gemm and cpu_kernel_paths have no tensor arguments and one kernel
// for every backend, in csrc/cpu/cpu_ops.cpp.
// and scaled_dot_product_attention, which turns PyTorch's SDPA semantics into
// calls of the core ops, is CompositeImplicitAutograd (csrc/api/composite/sdpa.cpp),
// as are varlen_attention and kv_cache_attention (csrc/api/composite/sequence_ops.cpp).
#include <torch/library.h>

#include "api/core/attention_options.h"

// The keyword-only arguments that both core ops take (api/core/attention_options.h).
#define SELFATTN_OPTIONS "*" SELFATTN_CORE_OPTIONS(SELFATTN_OPTION_SCHEMA)
// The extras of the user-facing functions (csrc/api/composite/score_options.h,
// and sinks: csrc/api/composite/sinks.h).
#define SELFATTN_SCORE_OPTIONS \
  "int[]? window=None, str causal_alignment=\"top_left\", Tensor? alibi_slopes=None, float? softcap=None, " \
  "Tensor? sinks=None"

// The arguments of each user-facing function, shared by its two overloads.
#define SELFATTN_SDPA_ARGUMENTS                                                                 \
  "(Tensor query, Tensor key, Tensor value, Tensor? attn_mask=None, float dropout_p=0.0, "      \
  "bool is_causal=False, float? scale=None, bool enable_gqa=False, *, " SELFATTN_SCORE_OPTIONS ")"
#define SELFATTN_VARLEN_ARGUMENTS                                                                    \
  "(Tensor query, Tensor key, Tensor value, Tensor cu_seqlens_q, Tensor cu_seqlens_k, int max_seqlen_q, " \
  "int max_seqlen_k, float dropout_p=0.0, bool is_causal=False, float? scale=None, *, " SELFATTN_SCORE_OPTIONS ")"
#define SELFATTN_KV_CACHE_ARGUMENTS                                                               \
  "(Tensor query, Tensor key_cache, Tensor value_cache, Tensor cache_seqlens, *, bool is_causal=True, " \
  "float? scale=None, int[]? window=None, Tensor? alibi_slopes=None, float? softcap=None, Tensor? sinks=None, " \
  "Tensor? block_table=None)"

TORCH_LIBRARY(selfattn, m) {
  // PyTorch's torch.nn.functional.scaled_dot_product_attention, argument for argument.
  m.def("scaled_dot_product_attention" SELFATTN_SDPA_ARGUMENTS " -> Tensor");
  // Each user-facing function's .with_lse overload also returns the
  // logsumexp of every row, (..., Hq, L) in float32 (float64 for float64
  // inputs), differentiable: return_lse=True in Python.
  m.def("scaled_dot_product_attention.with_lse" SELFATTN_SDPA_ARGUMENTS " -> (Tensor output, Tensor logsumexp)");

  // Packed variable-length batches: query (Tq, Hq, E), key (Tk, H, E) and
  // value (Tk, H, Ev) hold the rows of every sequence back to back; sequence
  // s owns rows [cu_seqlens_q[s], cu_seqlens_q[s + 1]) of query. No padding
  // is computed. Returns (Tq, Hq, Ev).
  // The logsumexp of .with_lse is (Hq, total_q).
  m.def("varlen_attention" SELFATTN_VARLEN_ARGUMENTS " -> Tensor");
  m.def("varlen_attention.with_lse" SELFATTN_VARLEN_ARGUMENTS " -> (Tensor output, Tensor logsumexp)");

  // Decoding with a KV cache: query (B, Hq, L, E) holds the last L positions
  // of each sequence, whose keys are the first cache_seqlens[b] rows of
  // key_cache (B, H, S_max, E), or of a paged cache: key_cache
  // (num_blocks, block_size, H, E) with block_table (B, max_blocks) giving
  // each sequence's blocks in order. Causal masks and windows are
  // bottom-right aligned. Returns (B, Hq, L, Ev).
  m.def("kv_cache_attention" SELFATTN_KV_CACHE_ARGUMENTS " -> Tensor");
  m.def("kv_cache_attention.with_lse" SELFATTN_KV_CACHE_ARGUMENTS " -> (Tensor output, Tensor logsumexp)");

  // The core ops, on 4-D tensors: query (B, Hq, L, E), key (B, H, S, E),
  // value (B, H, S, Ev) with Hq a multiple of H, and an optional mask whose
  // every dimension is 1 or that of (B, Hq, L, S). logsumexp is (B, Hq, L) in
  // float32 (float64 for float64 inputs); rng_state holds the dropout seed
  // and offset.
  //
  // The keyword-only arguments go beyond PyTorch's SDPA; their list and
  // meaning are in csrc/api/core/attention_options.h.
  m.def(
      "attention_forward(Tensor query, Tensor key, Tensor value, Tensor? attn_mask, float dropout_p, "
      "bool is_causal, float scale, " SELFATTN_OPTIONS ") -> (Tensor output, Tensor logsumexp, Tensor rng_state)",
      {at::Tag::nondeterministic_seeded});

  // grad_attn_mask has the mask's shape when attn_mask_requires_grad is set,
  // and is an empty tensor otherwise. grad_logsumexp, the gradient of the
  // forward's logsumexp (its shape), adds its path to the gradients; None
  // is zero.
  m.def(
      "attention_backward(Tensor grad_output, Tensor query, Tensor key, Tensor value, Tensor? attn_mask, "
      "Tensor output, Tensor logsumexp, Tensor rng_state, float dropout_p, bool is_causal, float scale, "
      "bool attn_mask_requires_grad, Tensor? grad_logsumexp=None, " SELFATTN_OPTIONS
      ") -> (Tensor grad_query, Tensor grad_key, "
      "Tensor grad_value, Tensor grad_attn_mask)");

  // Which tile products the CPU kernels use: "blas" (the BLAS PyTorch links)
  // or "portable" (our own loops).
  m.def("cpu_tile_gemm() -> str");
  // Which paths the CPU kernels take on this machine: the level of the
  // vectorised loops, and "matrix units (AMX)" or "float products" for bfloat16.
  m.def("cpu_kernel_paths() -> str[]");
}
