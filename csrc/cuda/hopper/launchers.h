// The launchers of the Hopper kernels, declared without their bodies:
// hdim*.cu instantiate them, dispatch.cu calls them.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include "common/attention_params.h"

namespace selfattn::cuda::hopper {

// The head dims the kernels are compiled for (E = Ev, no padding).
constexpr int kHeadDims[] = {64, 128};

// Query rows per block and keys per tile: the boxes of the tensor maps.
constexpr int kForwardBlockM = 128;
constexpr int kForwardBlockN = 128;

struct ForwardMaps {
  CUtensorMap q, k, v;
};

template <typename T, int kDim>
void launch_forward(const AttentionParams& p, const ForwardMaps& maps, cudaStream_t stream);

}  // namespace selfattn::cuda::hopper
