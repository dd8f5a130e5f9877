// Element-level device helpers that both kernel families share: loading and
// storing any of our dtypes as the accumulator type, the attention mask and
// the dropout decision (the score rules are in sequence_head.cuh). They
// index with 64-bit integers throughout, so tensors past 2^31 elements are
// safe.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "common/attention_params.h"
#include "common/numeric.h"
#include "common/philox.h"
#include "cuda/kernels.h"

namespace selfattn::cuda {

template <typename T, typename acc_t>
__device__ __forceinline__ acc_t to_acc(T x) {
  if constexpr (std::is_same_v<T, __half>) {
    return static_cast<acc_t>(__half2float(x));
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return static_cast<acc_t>(__bfloat162float(x));
  } else {
    return static_cast<acc_t>(x);
  }
}

template <typename T, typename acc_t>
__device__ __forceinline__ T from_acc(acc_t x) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(static_cast<float>(x));
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(static_cast<float>(x));
  } else {
    return static_cast<T>(x);
  }
}

// The attention mask's additive term for score (b, h, i, j): the float
// mask's value, or 0 / −inf for a boolean mask's true / false.
template <typename acc_t>
__device__ __forceinline__ acc_t mask_term(const AttentionParams& p, int64_t b, int64_t h, int64_t i, int64_t j) {
  const int64_t at = p.mask.stride.offset(b, h, i, j);
  switch (p.mask_dtype) {
    case ElementType::Bool: return static_cast<const bool*>(p.mask.data)[at] ? acc_t(0) : minus_infinity<acc_t>();
    case ElementType::Float32: return static_cast<acc_t>(static_cast<const float*>(p.mask.data)[at]);
    case ElementType::Float64: return static_cast<acc_t>(static_cast<const double*>(p.mask.data)[at]);
    case ElementType::Float16: return to_acc<__half, acc_t>(static_cast<const __half*>(p.mask.data)[at]);
    case ElementType::BFloat16:
      return to_acc<__nv_bfloat16, acc_t>(static_cast<const __nv_bfloat16*>(p.mask.data)[at]);
  }
  return acc_t(0);
}

// Adds a score gradient into the mask gradient (see BackwardBuffers).
template <typename acc_t>
__device__ __forceinline__ void add_mask_gradient(const BackwardBuffers& buffers, int64_t b, int64_t h, int64_t i,
                                                  int64_t j, acc_t grad) {
  auto* sum = static_cast<acc_t*>(buffers.grad_mask_accum.data);
  atomicAdd(sum + buffers.grad_mask_accum.stride.offset(b, h, i, j), grad);
}

// The dropout decisions of one call, resolved on the device (see DropoutSeed).
struct Dropout {
  uint64_t seed = 0, offset = 0;
  uint64_t threshold = 0;  // an element is kept when its random word is >= threshold
  double keep_scale = 1.0;  // 1 / (1 − p)
  bool enabled = false;

  // `index` is the score's (common/dropout_index.h), the CPU's
  // too, so both backends drop the same elements for the same seed.
  __device__ __forceinline__ bool keeps(uint64_t index) const {
    const Philox4x32 words = dropout_words(seed, offset, index >> 2);
    // Selected, not indexed: a run-time index would put the words in local memory.
    const unsigned lane = index & 3;
    const uint32_t word = lane == 0 ? words.word[0] : lane == 1 ? words.word[1] : lane == 2 ? words.word[2] : words.word[3];
    return word >= threshold;
  }
};

// Reads the seed and offset; the forward's first thread records them in
// rng_state for the backward.
__device__ __forceinline__ Dropout resolve_dropout(const AttentionParams& p, const DropoutSeed& source,
                                                   bool record) {
  Dropout d;
  if (!p.dropout.enabled()) return d;
  d.enabled = true;
  d.seed = source.seed_ptr ? static_cast<uint64_t>(*source.seed_ptr) : source.seed;
  d.offset = (source.offset_ptr ? static_cast<uint64_t>(*source.offset_ptr) : source.offset) + source.offset_add;
  d.threshold = dropout_threshold(p.dropout.p);
  d.keep_scale = p.dropout.p >= 1.0 ? 0.0 : 1.0 / (1.0 - p.dropout.p);
  if (record && source.record != nullptr) {
    source.record[0] = static_cast<int64_t>(d.seed);
    source.record[1] = static_cast<int64_t>(d.offset);
  }
  return d;
}

SELFATTN_HOST_DEVICE int64_t smaller(int64_t a, int64_t b) { return a < b ? a : b; }
SELFATTN_HOST_DEVICE int64_t larger(int64_t a, int64_t b) { return a > b ? a : b; }

// Launch checks: a failed launch is reported at the call, not at the next
// synchronisation.
void check_launch(const char* kernel);

}  // namespace selfattn::cuda
