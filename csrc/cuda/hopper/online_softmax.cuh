// The online softmax of a consumer warpgroup, on scores as wgmma leaves them:
// each thread holds two rows of its warp's 16 (row g and g + 8, g = lane / 4)
// and, per 8-column block j, the columns 8j + 2t and 8j + 2t + 1 (t = lane %
// 4) of each: s[j][0..1] for the first row, s[j][2..3] for the second. The
// four threads of a quad share a row, so a row's maximum takes two shuffles;
// its sum stays split over the quad until the end.
//
// Scores are kept in the log2 domain (scale·log2(e) folded in), so every
// exponential is one exp2.
#pragma once

#include <cstdint>

#include "common/numeric.h"
#include "cuda/tensor_core/warp_ops.cuh"

namespace selfattn::cuda::hopper {

struct OnlineSoftmax {
  float max[2] = {-INFINITY, -INFINITY};  // per row, log2 domain
  float sum[2] = {0.f, 0.f};              // this thread's part of each row's sum

  // New row maxima from tile s; s becomes P = exp2(s − max) and the output
  // accumulated so far, o, is rescaled to the new maxima.
  template <int kSBlocks, int kOBlocks>
  __device__ __forceinline__ void update(float (&s)[kSBlocks][4], float (&o)[kOBlocks][4]) {
#pragma unroll
    for (int row = 0; row < 2; ++row) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int j = 0; j < kSBlocks; ++j) tile_max = fmaxf(tile_max, fmaxf(s[j][2 * row], s[j][2 * row + 1]));
      const float new_max = fmaxf(max[row], tc::quad_max(tile_max));
      // A row that has seen only masked scores keeps max −inf; shifting by 0
      // then gives exp2(−inf) = 0 instead of NaN.
      const float shift = new_max == -INFINITY ? 0.f : new_max;
      const float rescale = exp2f(max[row] - shift);
      max[row] = new_max;
      float tile_sum = 0.f;
#pragma unroll
      for (int j = 0; j < kSBlocks; ++j) {
        s[j][2 * row] = exp2f(s[j][2 * row] - shift);
        s[j][2 * row + 1] = exp2f(s[j][2 * row + 1] - shift);
        tile_sum += s[j][2 * row] + s[j][2 * row + 1];
      }
      sum[row] = sum[row] * rescale + tile_sum;
#pragma unroll
      for (int j = 0; j < kOBlocks; ++j) {
        o[j][2 * row] *= rescale;
        o[j][2 * row + 1] *= rescale;
      }
    }
  }

  // What multiplies a finished row of the output, and the row's logsumexp
  // in the natural log; every lane of the warp must call it (it shuffles). A
  // row that saw no visible key is written as 0 with logsumexp −inf, as
  // PyTorch's safe softmax gives.
  __device__ __forceinline__ void finish(int row, float& factor, float& logsumexp) const {
    const float total = tc::quad_sum(sum[row]);
    const bool masked_row = max[row] == -INFINITY;
    factor = masked_row ? 0.f : 1.f / total;
    logsumexp = masked_row ? -INFINITY : (max[row] + log2f(total)) * kLn2;
  }
};

// P as the A operand of P·V, every k-step at once (tc::accumulators_as_a).
template <typename T, int kSBlocks>
__device__ __forceinline__ void to_a_operand(const float (&p)[kSBlocks][4], uint32_t (&a)[kSBlocks / 2][4]) {
#pragma unroll
  for (int kk = 0; kk < kSBlocks / 2; ++kk) tc::accumulators_as_a<T>(p, kk, a[kk]);
}

}  // namespace selfattn::cuda::hopper
