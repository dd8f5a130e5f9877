// The op schemas, in one place. Kernels are registered per backend:
//   CPU      csrc/cpu/cpu_ops.cpp
//   Meta     csrc/api/meta_ops.cpp
//   Autograd csrc/api/autograd_ops.cpp
// cpu_tile_gemm and cpu_kernel_paths have no tensor arguments and one kernel
// for every backend, in csrc/cpu/cpu_ops.cpp.
// and scaled_dot_product_attention, which turns PyTorch's SDPA semantics into
// calls of the core ops, is CompositeImplicitAutograd (csrc/api/sdpa.cpp).
#include <torch/library.h>

TORCH_LIBRARY(selfattn, m) {
  // PyTorch's torch.nn.functional.scaled_dot_product_attention, argument for argument.
  m.def(
      "scaled_dot_product_attention(Tensor query, Tensor key, Tensor value, Tensor? attn_mask=None, "
      "float dropout_p=0.0, bool is_causal=False, float? scale=None, bool enable_gqa=False) -> Tensor");

  // The core ops, on 4-D tensors: query (B, Hq, L, E), key (B, H, S, E),
  // value (B, H, S, Ev) with Hq a multiple of H, and an optional mask whose
  // every dimension is 1 or that of (B, Hq, L, S). logsumexp is (B, Hq, L) in
  // float32 (float64 for float64 inputs); rng_state holds the dropout seed
  // and offset.
  m.def(
      "attention_forward(Tensor query, Tensor key, Tensor value, Tensor? attn_mask, float dropout_p, "
      "bool is_causal, float scale) -> (Tensor output, Tensor logsumexp, Tensor rng_state)",
      {at::Tag::nondeterministic_seeded});

  // grad_attn_mask has the mask's shape when attn_mask_requires_grad is set,
  // and is an empty tensor otherwise.
  m.def(
      "attention_backward(Tensor grad_output, Tensor query, Tensor key, Tensor value, Tensor? attn_mask, "
      "Tensor output, Tensor logsumexp, Tensor rng_state, float dropout_p, bool is_causal, float scale, "
      "bool attn_mask_requires_grad) -> (Tensor grad_query, Tensor grad_key, Tensor grad_value, "
      "Tensor grad_attn_mask)");

  // Which tile products the CPU kernels use: "blas" (the BLAS PyTorch links)
  // or "portable" (our own loops).
  m.def("cpu_tile_gemm() -> str");
  // Which paths the CPU kernels take on this machine: the level of the
  // vectorised loops, and "matrix units (AMX)" or "float products" for bfloat16.
  m.def("cpu_kernel_paths() -> str[]");
}
