// Picks the tensor-core kernels for a call: the dtype, and the smallest
// compiled head dim that holds both E and Ev.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "cuda/tensor_core/launchers.h"

namespace selfattn::cuda {
namespace {

int padded_head_dim(const AttentionParams& p) {
  const int64_t dim = std::max(p.head_dim, p.value_dim);
  for (int d : tc::kHeadDims) {
    if (dim <= d) return d;
  }
  return 0;
}

// Calls launch.run<T, kDim>() for the call's dtype and padded head dim.
template <typename T, typename Launch>
void dispatch_head_dim(int dim, const Launch& launch) {
  switch (dim) {
    case 32: return launch.template run<T, 32>();
    case 64: return launch.template run<T, 64>();
    case 96: return launch.template run<T, 96>();
    case 128: return launch.template run<T, 128>();
    case 256: return launch.template run<T, 256>();
  }
}

template <typename Launch>
void dispatch(const AttentionParams& p, const Launch& launch) {
  if (p.dtype == ElementType::Float16) {
    dispatch_head_dim<__half>(padded_head_dim(p), launch);
  } else {
    dispatch_head_dim<__nv_bfloat16>(padded_head_dim(p), launch);
  }
}

struct ForwardLaunch {
  const AttentionParams& p;
  const DropoutSeed& seed;
  cudaStream_t stream;
  template <typename T, int kDim>
  void run() const { tc::launch_forward<T, kDim>(p, seed, stream); }
};

struct BackwardLaunch {
  const AttentionBackwardParams& bp;
  const DropoutSeed& seed;
  const BackwardBuffers& buffers;
  cudaStream_t stream;
  template <typename T, int kDim>
  void run() const { tc::launch_backward<T, kDim>(bp, seed, buffers, stream); }
};

}  // namespace

int tensor_core_head_dim(const AttentionParams& p) { return padded_head_dim(p); }

bool tensor_core_supports(const AttentionParams& p) {
  const bool sixteen_bit = p.dtype == ElementType::Float16 || p.dtype == ElementType::BFloat16;
  return sixteen_bit && p.head_dim > 0 && p.value_dim > 0 && padded_head_dim(p) > 0;
}

void tensor_core_forward(const AttentionParams& p, const DropoutSeed& seed, cudaStream_t stream) {
  dispatch(p, ForwardLaunch{p, seed, stream});
}

void tensor_core_backward(const AttentionBackwardParams& bp, const DropoutSeed& seed, const BackwardBuffers& buffers,
                          cudaStream_t stream) {
  dispatch(bp.fwd, BackwardLaunch{bp, seed, buffers, stream});
}

}  // namespace selfattn::cuda
