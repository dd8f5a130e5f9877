// Where each score lies in the dropout counter space: the one layout that
// the CPU and the CUDA kernels share, so that both drop the same elements
// for the same seed and offset (philox.h turns the index into a decision).
//
// Sequence s starts at s·Hq·max_seqlen_q·max_seqlen_k, so that no two
// sequences of a packed batch share random words, and its heads follow one
// another, each q_len × kv_len of the sequence's own lengths. Without
// sequences, sequence s is batch s and its lengths are the bounds
// (AttentionParams sets max_seqlen_q/k to L and S), so the index is the
// plain row-major ((b·Hq + h)·L + i)·S + j.
#pragma once

#include <cstdint>

#include "common/attention_params.h"

namespace selfattn {

// The first index of sequence s.
SELFATTN_HOST_DEVICE uint64_t sequence_dropout_base(const AttentionParams& p, int64_t s) {
  return static_cast<uint64_t>(s * p.q_heads) * static_cast<uint64_t>(p.max_seqlen_q) *
         static_cast<uint64_t>(p.max_seqlen_k);
}

// Score (i, j) of query head h of sequence s, whose lengths are q_len × kv_len.
SELFATTN_HOST_DEVICE uint64_t dropout_index(const AttentionParams& p, int64_t s, int64_t h, int64_t q_len,
                                            int64_t kv_len, int64_t i, int64_t j) {
  return p.dropout.index_base + sequence_dropout_base(p, s) + static_cast<uint64_t>((h * q_len + i) * kv_len + j);
}

// dropout_index of a call without sequences (or of one sequence cut out as a
// call of its own, whose base is in index_base), in the row-major form that
// keeps no 64-bit sequence base live across a kernel's loops.
SELFATTN_HOST_DEVICE uint64_t batch_dropout_index(const AttentionParams& p, int64_t b, int64_t h, int64_t i,
                                                  int64_t j) {
  return p.dropout.index_base + static_cast<uint64_t>(((b * p.q_heads + h) * p.q_len + i) * p.kv_len + j);
}

}  // namespace selfattn
