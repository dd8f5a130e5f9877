// Where each sequence of a call lies in the tensors: a batch of its own, or
// a run of rows in a packed batch (cu_seqlens), possibly seeing only the
// first keys of a cache (seqused_k). See AttentionParams.
#pragma once

#include <cstdint>

#include "common/attention_params.h"

namespace selfattn {

struct Sequence {
  int64_t batch;    // the tensors' batch index
  int64_t q_begin;  // first query row, first key row
  int64_t k_begin;
  int64_t q_len, kv_len;
};

SELFATTN_HOST_DEVICE Sequence sequence(const AttentionParams& p, int64_t s) {
  Sequence seq{s, 0, 0, p.q_len, p.kv_len};
  if (p.cu_seqlens_q != nullptr) {
    seq.batch = 0;
    seq.q_begin = p.cu_seqlens_q[s];
    seq.q_len = p.cu_seqlens_q[s + 1] - seq.q_begin;
    seq.k_begin = p.cu_seqlens_k[s];
    seq.kv_len = p.cu_seqlens_k[s + 1] - seq.k_begin;
  }
  if (p.seqused_k != nullptr) seq.kv_len = p.seqused_k[s];
  return seq;
}

SELFATTN_HOST_DEVICE int64_t element_size(ElementType t) {
  switch (t) {
    case ElementType::Float16:
    case ElementType::BFloat16: return 2;
    case ElementType::Float32: return 4;
    case ElementType::Float64: return 8;
    case ElementType::Bool: return 1;
  }
  return 1;
}

}  // namespace selfattn
