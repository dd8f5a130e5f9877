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
  // Added to every score's index: sequence s of a packed batch starts at
  // s·Hq·max_seqlen_q·max_seqlen_k, so no two sequences share random words.
  uint64_t index_base = 0;

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
  // The L of the tensors: the stride between heads of the logsumexp and of
  // the backward's other per-row arrays (q_len is a sequence's own length).
  int64_t rows_per_head = 0;

  MaskKind mask_kind = MaskKind::None;
  ElementType mask_dtype = ElementType::Bool;
  TensorView mask;  // broadcast to (batch, Hq, L, S) through zero strides
  // The mask's own extent in each dimension (1 where it broadcasts); the mask
  // gradient has this shape.
  int64_t mask_batch = 1, mask_heads = 1, mask_rows = 1, mask_cols = 1;

  // Visibility. With d = i + shift − j the distance of key j behind query i
  // (shift = S − L when bottom_right, else 0), key j is visible when
  //   causal:  d >= 0,
  //   window:  d <= window_left and −d <= window_right (a negative bound is no bound).
  bool causal = false;
  bool bottom_right = false;
  int64_t window_left = -1, window_right = -1;

  double scale = 1.0;
  // softcap > 0 turns a scaled score s into softcap·tanh(s / softcap), before
  // the ALiBi bias and the mask are added.
  double softcap = 0.0;
  // ALiBi adds −slope·|d|. The slopes are in the accumulator type, indexed
  // batch·alibi_batch_stride + head (the stride is 0 for one slope per head).
  const void* alibi_slopes = nullptr;
  int64_t alibi_batch_stride = 0;

  DropoutParams dropout;

  // Sequences of their own lengths. With cu_seqlens_q / cu_seqlens_k (int32,
  // sequences + 1 offsets) the tensors hold one batch of packed rows and
  // sequence s owns query rows [cu_seqlens_q[s], cu_seqlens_q[s + 1]) and key
  // rows [cu_seqlens_k[s], cu_seqlens_k[s + 1]). With seqused_k (int32,
  // one per sequence) sequence s sees only its first seqused_k[s] keys: a
  // KV cache. Without either, sequence s is batch s, of length q_len × kv_len.
  const int32_t* cu_seqlens_q = nullptr;
  const int32_t* cu_seqlens_k = nullptr;
  const int32_t* seqused_k = nullptr;
  // A paged cache (with seqused_k): k and v are the cache's blocks,
  // (num_blocks, H, block_size, dim), and key j of sequence s lies in row
  // j % block_size of block block_table[s·block_table_stride + j / block_size].
  // kv_len is then a sequence's capacity, block_table_stride·block_size.
  const int32_t* block_table = nullptr;
  int64_t block_table_stride = 0;
  int64_t block_size = 0;
  // Set for every call: without cu_seqlens, sequences = batch and the bounds
  // are q_len and kv_len.
  int64_t sequences = 0;
  int64_t max_seqlen_q = 0, max_seqlen_k = 0;  // bounds of the sequence lengths

  SELFATTN_HOST_DEVICE int64_t group_size() const { return q_heads / kv_heads; }
  // Index of query row `row` of head (b, h) in the per-row arrays.
  SELFATTN_HOST_DEVICE int64_t row_index(int64_t b, int64_t h, int64_t row) const {
    return (b * q_heads + h) * rows_per_head + row;
  }
  SELFATTN_HOST_DEVICE bool has_sequences() const {
    return cu_seqlens_q != nullptr || seqused_k != nullptr;
  }
};

struct AttentionBackwardParams {
  AttentionParams fwd;  // inputs, the forward's output and its logsumexp

  TensorView grad_out;         // (batch, Hq, L, Ev)
  TensorView grad_q, grad_k, grad_v;
  TensorView grad_mask;        // (mask_batch, mask_heads, mask_rows, mask_cols), or null
  // Per-row scratch of shape (batch, Hq, L), in the accumulator type:
  void* delta = nullptr;       // D = rowsum(P ∘ dP)
  void* row_scale = nullptr;   // 1 / rowsum(exp(S − logsumexp)), which renormalises the recomputed P
  // The gradient of the forward's logsumexp, (batch, Hq, L) in the
  // accumulator type, or null for none. d lse_i / d S_ij = P_ij, so it
  // enters dS = P ∘ (dP − D) as D − dlse.
  const void* grad_logsumexp = nullptr;
};

}  // namespace selfattn
