// Tile shapes per head dim, and the launches. Each head dim's kernels are
// instantiated in a file of their own (hdim*.cu) so that the build runs them
// in parallel; dispatch.cu picks one at run time.
#pragma once

#include "cuda/tensor_core/backward_kernel.cuh"
#include "cuda/tensor_core/forward_kernel.cuh"
#include "cuda/tensor_core/launchers.h"

namespace selfattn::cuda::tc {

// Forward: four warps of 16 query rows each, so that two blocks share an SM.
// (Measured on an H100 at head dims 64 and 128 against 8 warps of 16 rows
// and 4 or 8 warps of 32 rows: within 10%, this one first. Two 16-row tiles
// a warp spill at head dim 128.) K and V are double-buffered; at head dim 256
// 32-key tiles keep that within 164 KB, the sm_80 limit.
template <int kDim>
using ForwardShapeFor = std::conditional_t<kDim == 256, ForwardShape<64, 32, 4>, ForwardShape<64, 64, 4>>;

// Backward: 64 query rows per step against 64 keys a block (128 keys spill
// the dK and dV accumulators at head dim 128). Q and dO are double-buffered
// where shared memory allows (164 KB on sm_80).
template <int kDim>
using BackwardShapeFor = BackwardShape<64, 64, 8, kDim == 256 ? 1 : 2>;

template <typename T, int kDim>
constexpr int forward_shared_bytes() {
  using Shape = ForwardShapeFor<kDim>;
  return SharedTile<T, Shape::kBlockM, kDim>::kBytes + 4 * SharedTile<T, Shape::kBlockN, kDim>::kBytes;
}

template <typename T, int kDim>
constexpr int backward_shared_bytes() {
  using Shape = BackwardShapeFor<kDim>;
  return 2 * SharedTile<T, Shape::kBlockN, kDim>::kBytes +
         2 * Shape::kStages * SharedTile<T, Shape::kBlockM, kDim>::kBytes +
         2 * SharedTile<T, Shape::kBlockM, Shape::kBlockN>::kBytes;
}

// Kernels that use more than 48 KB of shared memory must say so first; the
// attribute is per device, so it is set at every launch (it costs little).
template <typename Kernel>
void allow_shared_bytes(Kernel kernel, int bytes) {
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

template <typename T, int kDim>
void launch_forward(const AttentionParams& p, const DropoutSeed& seed, cudaStream_t stream) {
  using Shape = ForwardShapeFor<kDim>;
  constexpr int bytes = forward_shared_bytes<T, kDim>();
  const auto kernel =
      needs_general_rules(p) ? forward_kernel<T, kDim, Shape, true> : forward_kernel<T, kDim, Shape, false>;
  allow_shared_bytes(kernel, bytes);
  const int64_t blocks = ceil_div(p.max_seqlen_q, Shape::kBlockM) * p.sequences * p.q_heads;
  if (blocks == 0) return;
  kernel<<<static_cast<unsigned>(blocks), Shape::kThreads, bytes, stream>>>(p, seed);
  check_launch("tensor-core forward");
}

template <typename T, int kDim>
void launch_backward(const AttentionBackwardParams& bp, const DropoutSeed& seed, const BackwardBuffers& buffers,
                     cudaStream_t stream) {
  using Shape = BackwardShapeFor<kDim>;
  constexpr int bytes = backward_shared_bytes<T, kDim>();
  const auto kernel = needs_general_rules(bp.fwd) ? backward_kernel<T, kDim, Shape, true>
                                                  : backward_kernel<T, kDim, Shape, false>;
  allow_shared_bytes(kernel, bytes);
  const int64_t blocks = ceil_div(bp.fwd.max_seqlen_k, Shape::kBlockN) * bp.fwd.sequences * bp.fwd.kv_heads;
  if (blocks == 0) return;
  kernel<<<static_cast<unsigned>(blocks), Shape::kThreads, bytes, stream>>>(bp, seed, buffers);
  check_launch("tensor-core backward");
}

// One head dim's kernels for both 16-bit types.
#define SELFATTN_INSTANTIATE_HEAD_DIM(kDim)                                                                  \
  template void launch_forward<__half, kDim>(const AttentionParams&, const DropoutSeed&, cudaStream_t);       \
  template void launch_forward<__nv_bfloat16, kDim>(const AttentionParams&, const DropoutSeed&, cudaStream_t); \
  template void launch_backward<__half, kDim>(const AttentionBackwardParams&, const DropoutSeed&,             \
                                              const BackwardBuffers&, cudaStream_t);                          \
  template void launch_backward<__nv_bfloat16, kDim>(const AttentionBackwardParams&, const DropoutSeed&,      \
                                                     const BackwardBuffers&, cudaStream_t);

}  // namespace selfattn::cuda::tc
