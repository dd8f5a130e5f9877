// The launch of the Hopper forward for one dtype and head dim; each head dim
// is instantiated in a file of its own (hdim*.cu), so the build runs them in
// parallel.
#pragma once

#include "cuda/hopper/forward_kernel.cuh"
#include "cuda/hopper/launchers.h"

namespace selfattn::cuda::hopper {

template <typename T, int kDim>
void launch_forward(const AttentionParams& p, const ForwardMaps& maps, cudaStream_t stream) {
  using Plan = ForwardPlan<T, kDim>;
  const auto kernel = hopper_forward_kernel<T, kDim>;
  // More than 48 KB of shared memory must be asked for; the attribute is per
  // device, so it is set at every launch (it costs little).
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Plan::kSharedBytes);
  const int64_t blocks = ceil_div(p.q_len, Plan::kBlockM) * p.batch * p.q_heads;
  kernel<<<static_cast<unsigned>(blocks), Plan::kThreads, Plan::kSharedBytes, stream>>>(p, maps.q, maps.k, maps.v);
  check_launch("Hopper forward");
}

// One head dim's forward for both 16-bit types.
#define SELFATTN_INSTANTIATE_HOPPER_HEAD_DIM(kDim)                                                  \
  template void launch_forward<__half, kDim>(const AttentionParams&, const ForwardMaps&, cudaStream_t); \
  template void launch_forward<__nv_bfloat16, kDim>(const AttentionParams&, const ForwardMaps&, cudaStream_t);

}  // namespace selfattn::cuda::hopper
