// Plain description of one attention call, filled by the torch-facing API
// (csrc/api/) and read by the kernels. No torch headers here, so that CPU and
// CUDA kernels can both be compiled against it on their own.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace selfattn {

enum class ElementType : int8_t { Float16, BFloat16, Float32, Float64, Bool };

// Element strides of a (batch, head, row, column) view. A broadcast dimension
// has stride 0, so the kernels never see a materialised broadcast.
struct Strides4 {
  int64_t batch = 0, head = 0, row = 0, col = 0;

  SELFATTN_HOST_DEVICE int64_t offset(int64_t b, int64_t h, int64_t r, int64_t c) const {
    return b * batch + h * head + r * row + c * col;
  }
};

struct TensorView {
  void* data = nullptr;
  Strides4 stride;
};

enum class MaskKind : int8_t { None, Boolean, Additive };

// Dropout is driven by a counter-based generator: the keep decision of score
// (b, h, i, j) is a pure function of (seed, offset, linear index), so the
// backward regenerates the forward's mask without storing it.
struct DropoutParams {
  double p = 0.0;  // probability of dropping; 0 disables dropout
  uint64_t seed = 0;
  uint64_t offset = 0;

  SELFATTN_HOST_DEVICE bool enabled() const { return p > 0.0; }
};

struct AttentionParams {
  ElementType dtype = ElementType::Float32;  // of q, k, v, out and their grads

  int64_t batch = 0;
  int64_t q_heads = 0;   // Hq
  int64_t kv_heads = 0;  // H; Hq is a multiple of H and query head h reads kv head h / (Hq / H)
  int64_t q_len = 0;     // L
  int64_t kv_len = 0;    // S
  int64_t head_dim = 0;  // E
  int64_t value_dim = 0; // Ev

  TensorView q, k, v;
  TensorView out;   // (batch, Hq, L, Ev)
  void* logsumexp = nullptr;  // (batch, Hq, L) contiguous, float32 or float64 (the accumulator type)

  MaskKind mask_kind = MaskKind::None;
  ElementType mask_dtype = ElementType::Bool;
  TensorView mask;  // broadcast to (batch, Hq, L, S) through zero strides
  // The mask's own extent in each dimension (1 where it broadcasts); the mask
  // gradient has this shape.
  int64_t mask_batch = 1, mask_heads = 1, mask_rows = 1, mask_cols = 1;

  bool causal = false;  // top-left aligned: row i sees columns j <= i
  double scale = 1.0;
  DropoutParams dropout;

  SELFATTN_HOST_DEVICE int64_t group_size() const { return q_heads / kv_heads; }
};

struct AttentionBackwardParams {
  AttentionParams fwd;  // inputs, the forward's output and its logsumexp

  TensorView grad_out;         // (batch, Hq, L, Ev)
  TensorView grad_q, grad_k, grad_v;
  TensorView grad_mask;        // (mask_batch, mask_heads, mask_rows, mask_cols), or null
  // Per-row scratch of shape (batch, Hq, L), in the accumulator type:
  void* delta = nullptr;       // D = rowsum(P ∘ dP)
  void* row_scale = nullptr;   // 1 / rowsum(exp(S − logsumexp)), which renormalises the recomputed P
};

}  // namespace selfattn
