// Tile shapes per head dim, and the launches. Each head dim's kernels are
// instantiated in a file of their own (hdim*.cu) so that the build runs them
// in parallel; dispatch.cu picks one at run time.
#pragma once

#include "cuda/tensor_core/backward_kernel.cuh"
#include "cuda/tensor_core/forward_kernel.cuh"
#include "cuda/tensor_core/launchers.h"

namespace selfattn::cuda::tc {

// Forward: four warps, K and V double-buffered.
// - The fast paths give each warp two 16-row tiles at head dims 32, 64 and
//   128, which halves the shared-memory reads per product, and 128-key tiles
//   at head dim 64, where a tile's softmax would otherwise have half as many
//   products to share it. benchmarks/sass_gate.py measures each shape; two tiles
//   a warp spill at head dim 96, and spill easily at 128, at 254 of 255
//   registers.
// - The other rules keep one tile a warp: their per-score rules need the
//   registers.
// - At head dim 256, 32-key tiles keep the stages within kMaxSharedBytes.
// At head dim 128 the fast paths' 96 KB of shared memory let an A100 run
// one block per SM, an H100 two.
template <int kDim, Rules kRules>
struct ForwardShapeChoice {
  using type = std::conditional_t<
      kDim == 256, ForwardShape<64, 32, 4>,
      std::conditional_t<!is_fast(kRules) || kDim == 96, ForwardShape<64, 64, 4>,
                         std::conditional_t<kDim == 64, ForwardShape<128, 128, 4>, ForwardShape<128, 64, 4>>>>;
};
template <int kDim, Rules kRules>
using ForwardShapeFor = typename ForwardShapeChoice<kDim, kRules>::type;

// Backward: eight warps; BackwardShape<query rows a step, keys a block,
// warps, stages of Q and dO, then the warps down the rows of S and dP, of
// dK and dV, and of dQ>. Shared memory stays within kMaxSharedBytes.
// - The fast paths take 128 keys a block at head dims 64 and 128, which
//   halves the dQ additions per key and the reads of Q and dO per product.
// - Head dim 256 takes 32 query rows a step: its dK and dV accumulators
//   leave room for little else.
// - The warp grids are the ones with the fewest instructions per product
//   among those that do not spill, as benchmarks/sass_gate.py and ptxas report
//   them: at 254–255 registers, moving a grid by one warp decides between
//   no spill and a few hundred bytes of it.
template <int kDim, Rules kRules>
struct BackwardShapeChoice {
  using Plain = BackwardShape<64, 64, 8, 2, 4, 4, 4>;
  using Dim256 = BackwardShape<32, 64, 8, 2, 2, 4, 1>;
  using Fast = std::conditional_t<
      kDim == 64, BackwardShape<64, 128, 8, 2, 4, 4, 2>,
      std::conditional_t<kDim == 128, BackwardShape<64, 128, 8, 2, 4, 2, 4>,
                         std::conditional_t<kDim == 256, Dim256, Plain>>>;
  using Other = std::conditional_t<
      kDim == 128, BackwardShape<64, 64, 8, 2, 4, 4, 2>,
      std::conditional_t<kDim == 96, BackwardShape<64, 64, 8, 2, 2, 4, 4>,
                         std::conditional_t<kDim == 256, Dim256, Plain>>>;
  using type = std::conditional_t<is_fast(kRules), Fast, Other>;
};
template <int kDim, Rules kRules>
using BackwardShapeFor = typename BackwardShapeChoice<kDim, kRules>::type;

template <typename T, int kDim, typename Shape>
constexpr int forward_shared_bytes() {
  return SharedTile<T, Shape::kBlockM, kDim>::kBytes + 4 * SharedTile<T, Shape::kBlockN, kDim>::kBytes;
}

template <typename T, int kDim, typename Shape>
constexpr int backward_shared_bytes() {
  return 2 * SharedTile<T, Shape::kBlockN, kDim>::kBytes +
         2 * Shape::kStages * SharedTile<T, Shape::kBlockM, kDim>::kBytes +
         2 * SharedTile<T, Shape::kBlockM, Shape::kBlockN>::kBytes;
}

// The most dynamic shared memory a block may have on sm_80 (the A100); the
// H100 allows 227 KB.
constexpr int kMaxSharedBytes = 163 * 1024;

// Kernels that use more than 48 KB of shared memory must say so first; the
// attribute is per device, so it is set at every launch (it costs little).
template <typename Kernel>
void allow_shared_bytes(Kernel kernel, int bytes) {
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

template <typename T, int kDim, Rules kRules>
void launch_forward_with(const AttentionParams& p, const DropoutSeed& seed, cudaStream_t stream) {
  using Shape = ForwardShapeFor<kDim, kRules>;
  constexpr int bytes = forward_shared_bytes<T, kDim, Shape>();
  static_assert(bytes <= kMaxSharedBytes, "the tiles fit an sm_80 block's shared memory");
  const auto kernel = forward_kernel<T, kDim, Shape, kRules>;
  allow_shared_bytes(kernel, bytes);
  const int64_t blocks = ceil_div(p.max_seqlen_q, Shape::kBlockM) * p.sequences * p.q_heads;
  if (blocks == 0) return;
  kernel<<<static_cast<unsigned>(blocks), Shape::kThreads, bytes, stream>>>(p, seed);
  check_launch("tensor-core forward");
}

template <typename T, int kDim>
void launch_forward(const AttentionParams& p, const DropoutSeed& seed, cudaStream_t stream) {
  switch (rules_for(p)) {
    case Rules::kPlain: return launch_forward_with<T, kDim, Rules::kPlain>(p, seed, stream);
    case Rules::kCausal: return launch_forward_with<T, kDim, Rules::kCausal>(p, seed, stream);
    case Rules::kOptions: return launch_forward_with<T, kDim, Rules::kOptions>(p, seed, stream);
    case Rules::kGeneral: return launch_forward_with<T, kDim, Rules::kGeneral>(p, seed, stream);
  }
}

template <typename T, int kDim, Rules kRules>
void launch_backward_with(const AttentionBackwardParams& bp, const DropoutSeed& seed, const BackwardBuffers& buffers,
                          cudaStream_t stream) {
  using Shape = BackwardShapeFor<kDim, kRules>;
  static_assert(Shape::kBlockM <= kGradQAccumSlackRows, "a query tile's rows past the last fit the slack");
  constexpr int bytes = backward_shared_bytes<T, kDim, Shape>();
  static_assert(bytes <= kMaxSharedBytes, "the tiles fit an sm_80 block's shared memory");
  const auto kernel = backward_kernel<T, kDim, Shape, kRules>;
  allow_shared_bytes(kernel, bytes);
  const int key_blocks = static_cast<int>(ceil_div(bp.fwd.max_seqlen_k, Shape::kBlockN));
  const int64_t heads = bp.fwd.sequences * bp.fwd.kv_heads;
  if (key_blocks == 0 || heads == 0) return;
  if (!buffers.ordered_grad_q) {
    kernel<<<static_cast<unsigned>(heads * key_blocks), Shape::kThreads, bytes, stream>>>(bp, seed, buffers,
                                                                                          KeyBlocks{0, key_blocks});
    check_launch("tensor-core backward");
    return;
  }
  // Deterministic: one launch per key block, in order. Within a launch one
  // block owns a kv head's key block and one thread a dQ element of a row,
  // so each element takes at most one addition; the stream orders the
  // launches, and with them the additions. dK and dV have one writer
  // anyway. The cost is launches of heads blocks each, which fill the GPU
  // only where sequences × kv heads does.
  for (int block = 0; block < key_blocks; ++block) {
    kernel<<<static_cast<unsigned>(heads), Shape::kThreads, bytes, stream>>>(bp, seed, buffers, KeyBlocks{block, 1});
    check_launch("tensor-core backward");
  }
}

template <typename T, int kDim>
void launch_backward(const AttentionBackwardParams& bp, const DropoutSeed& seed, const BackwardBuffers& buffers,
                     cudaStream_t stream) {
  switch (rules_for(bp.fwd)) {
    case Rules::kPlain: return launch_backward_with<T, kDim, Rules::kPlain>(bp, seed, buffers, stream);
    case Rules::kCausal: return launch_backward_with<T, kDim, Rules::kCausal>(bp, seed, buffers, stream);
    case Rules::kOptions: return launch_backward_with<T, kDim, Rules::kOptions>(bp, seed, buffers, stream);
    case Rules::kGeneral: return launch_backward_with<T, kDim, Rules::kGeneral>(bp, seed, buffers, stream);
  }
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
