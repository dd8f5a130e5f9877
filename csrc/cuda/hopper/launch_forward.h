// The launchers of the Hopper forward, declared without CuTe: dispatch.cu
// calls them, forward_hdim*.cu instantiate them (launch.cuh).
#pragma once

#include <cuda_runtime.h>

#include "common/attention_params.h"
#include "cuda/hopper/copy_engine_view.h"

namespace cutlass {
struct half_t;
struct bfloat16_t;
}  // namespace cutlass

namespace selfattn::cuda::hopper {

// The head dims the forward is compiled for (E = Ev, no padding).
constexpr int kHeadDims[] = {64, 128, 256};

// Query rows per block (two consumer warpgroups of 64).
constexpr int kForwardBlockM = 128;

// q, k, v and out as the copy engine reads and writes them.
struct ForwardViews {
  CopyEngineView q, k, v, out;
};

// Element: cutlass::half_t or cutlass::bfloat16_t.
template <typename Element, int kDim>
void launch_forward(const AttentionParams& p, const ForwardViews& views, cudaStream_t stream);

}  // namespace selfattn::cuda::hopper
