// Masking and the online softmax of a consumer warpgroup, on a score tile as
// wgmma leaves it. For a 64×N product each thread holds N/2 floats: with
// g = lane / 4 and t = lane % 4, register r is row 16·warp + g + 8·((r/2) % 2)
// and column 8·(r/4) + 2t + r % 2 (CuTe's value order of the accumulator,
// ((2, 2, N/8)) colexicographic). Each thread therefore has two rows, and
// the four threads of a quad share them: a row's maximum takes two
// shuffles, its sum stays split over the quad until the end.
//
// The exponentials are exp2(s·c − m·c) with c = scale·log2(e) > 0, one FFMA
// and one MUFU.EX2 per score; the scale never multiplies a score on its own.
#pragma once

#include <cute/tensor.hpp>

#include <cmath>

#include "common/numeric.h"

namespace selfattn::cuda::hopper {

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffff, x, 2));
}

__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffff, x, 1);
  return x + __shfl_xor_sync(0xffffffff, x, 2);
}

// Which of the thread's two rows register r belongs to.
__device__ __forceinline__ constexpr int row_half(int r) { return (r >> 1) & 1; }

// −inf where the key at col0 + column is past kv_len or, under causal
// masking, after the row (top-left: query i sees keys 0 .. i). Only the
// tiles that hold such a key for some row of the warpgroup call this.
template <typename Scores>
__device__ __forceinline__ void mask_scores(Scores& s, int first_row, int col0, int kv_len, bool causal) {
  const int t = static_cast<int>(threadIdx.x % 4);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = first_row + 8 * h;
    const int end = causal && row + 1 < kv_len ? row + 1 : kv_len;
    const int visible = end - col0 - 2 * t;  // columns 2t + c with c < visible are seen
#pragma unroll
    for (int r = 0; r < cute::size(s); ++r) {
      if (row_half(r) == h && 8 * (r / 4) + (r & 1) >= visible) s(r) = -INFINITY;
    }
  }
}

// The running maximum (of the raw scores) and the thread's part of the sum
// of exponentials for each of its two rows.
struct SoftmaxState {
  float max[2] = {-INFINITY, -INFINITY};
  float sum[2] = {0.f, 0.f};
};

// s becomes P = exp2(s·c − max·c) with the maxima updated by this tile;
// rescale[h] is what the output accumulated so far must be multiplied by.
// kMasked: the tile may hold −inf scores, and a row may have seen nothing
// but −inf so far; its maximum then stays −inf and it is shifted by 0
// instead (exp2(−inf) = 0, not NaN). An unmasked tile makes every maximum
// finite, so it needs no such test.
template <bool kMasked, typename Scores>
__device__ __forceinline__ void online_softmax(Scores& s, SoftmaxState& state, float c, float (&rescale)[2]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float tile_max = state.max[h];
#pragma unroll
    for (int r = 0; r < cute::size(s); ++r) {
      if (row_half(r) == h) tile_max = fmaxf(tile_max, s(r));
    }
    const float new_max = quad_max(tile_max);
    float shift = new_max * c;
    if constexpr (kMasked) shift = new_max == -INFINITY ? 0.f : shift;
    rescale[h] = exp2f(fmaf(state.max[h], c, -shift));
    state.max[h] = new_max;
    float tile_sum = 0.f;
#pragma unroll
    for (int r = 0; r < cute::size(s); ++r) {
      if (row_half(r) == h) {
        s(r) = exp2f(fmaf(s(r), c, -shift));
        tile_sum += s(r);
      }
    }
    state.sum[h] = fmaf(state.sum[h], rescale[h], tile_sum);
  }
}

template <typename Accumulator>
__device__ __forceinline__ void rescale_rows(Accumulator& o, const float (&rescale)[2]) {
#pragma unroll
  for (int r = 0; r < cute::size(o); ++r) o(r) *= rescale[row_half(r)];
}

// What multiplies a finished row of the output, and the row's logsumexp in
// the natural log. Every lane of the warp calls it (it shuffles).
__device__ __forceinline__ void finish_row(const SoftmaxState& state, int h, float scale, float& factor,
                                           float& logsumexp) {
  const float total = quad_sum(state.sum[h]);
  const bool empty = !(total > 0.f);  // no visible key (kept for safety: causal top-left always sees key 0)
  factor = empty ? 0.f : 1.f / total;
  logsumexp = empty ? -INFINITY : fmaf(state.max[h], scale, __logf(total));
}

}  // namespace selfattn::cuda::hopper
