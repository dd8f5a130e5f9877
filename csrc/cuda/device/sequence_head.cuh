// One query head of one sequence, as every CUDA kernel walks it: where its
// rows lie in the tensors, its own lengths, and what the score rules of
// common/score_rules.h need. Kernels index query rows i and key rows j
// within the sequence (0 ≤ i < q_len, 0 ≤ j < kv_len) and turn them into
// tensor rows here, so that a call without sequences (sequence s = batch s,
// of the tensors' lengths) runs through the same code as a packed batch or
// a KV cache.
#pragma once

#include "common/score_rules.h"
#include "common/sequences.h"
#include "cuda/device/elements.cuh"

namespace selfattn::cuda {

template <typename acc_t>
struct SequenceHead {
  Sequence seq;   // the tensors' batch, first rows and lengths of the sequence
  int64_t s, h;   // the sequence and the query head
  int64_t shift;  // of the diagonal (diagonal_shift)
  acc_t alibi;    // the head's ALiBi slope; 0 without ALiBi

  // Tensor rows of query row i and key row j.
  __device__ __forceinline__ int64_t q_row(int64_t i) const { return seq.q_begin + i; }
  __device__ __forceinline__ int64_t k_row(int64_t j) const { return seq.k_begin + j; }
};

template <typename acc_t>
__device__ __forceinline__ SequenceHead<acc_t> sequence_head(const AttentionParams& p, const Sequence& seq, int64_t s,
                                                             int64_t h) {
  SequenceHead<acc_t> head;
  head.seq = seq;
  head.s = s;
  head.h = h;
  head.shift = diagonal_shift(p, seq.q_len, seq.kv_len);
  // Slopes are per sequence, which is not the tensors' batch in a packed one.
  head.alibi = p.alibi_slopes != nullptr ? alibi_slope<acc_t>(p, s, h) : acc_t(0);
  return head;
}

// Index of query row i in the per-row arrays (logsumexp, delta): (batch, Hq,
// L) rows of the tensors.
template <typename acc_t>
__device__ __forceinline__ int64_t row_index(const AttentionParams& p, const SequenceHead<acc_t>& head, int64_t i) {
  return p.row_index(head.seq.batch, head.h, head.q_row(i));
}

// Whether the rules (causality, windows) hide key j from query row i.
template <typename acc_t>
__device__ __forceinline__ bool key_hidden(const AttentionParams& p, const SequenceHead<acc_t>& head, int64_t i,
                                           int64_t j) {
  return selfattn::key_hidden(p, i, j, head.shift, head.seq.kv_len);
}

// The score as the softmax sees it, from `scaled` = scale·q_i·k_j of a
// visible key: softcap, ALiBi, then the attention mask, in the order of the
// CPU kernels. `cap_slope`, when given, receives the softcap's derivative
// (1 − tanh², 1 without softcap), the factor of the score gradient.
template <typename acc_t>
__device__ __forceinline__ acc_t visible_score(const AttentionParams& p, const SequenceHead<acc_t>& head, int64_t i,
                                               int64_t j, acc_t scaled, acc_t* cap_slope = nullptr) {
  if (cap_slope != nullptr) *cap_slope = acc_t(1);
  if (has_score_bias(p)) scaled = biased_score(p, scaled, head.alibi, i, j, head.shift, cap_slope);
  if (p.mask_kind != MaskKind::None) {
    scaled += mask_term<acc_t>(p, head.seq.batch, head.h, head.q_row(i), head.k_row(j));
  }
  return scaled;
}

// visible_score, or −inf where the rules hide the key. `product` is the raw q·k.
template <typename acc_t>
__device__ __forceinline__ acc_t masked_score(const AttentionParams& p, const SequenceHead<acc_t>& head, int64_t i,
                                              int64_t j, acc_t product, acc_t* cap_slope = nullptr) {
  if (key_hidden(p, head, i, j)) {
    if (cap_slope != nullptr) *cap_slope = acc_t(1);
    return minus_infinity<acc_t>();
  }
  return visible_score(p, head, i, j, product * static_cast<acc_t>(p.scale), cap_slope);
}

}  // namespace selfattn::cuda
