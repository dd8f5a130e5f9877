// The launchers of the tensor-core kernels, declared without their bodies:
// hdim*.cu instantiate them, dispatch.cu calls them.
#pragma once

#include <cuda_runtime.h>

#include "cuda/kernels.h"

namespace selfattn::cuda::tc {

// The head dims the kernels are compiled for; smaller ones are padded up.
constexpr int kHeadDims[] = {32, 64, 96, 128, 256};

template <typename T, int kDim>
void launch_forward(const AttentionParams& p, const DropoutSeed& seed, cudaStream_t stream);

template <typename T, int kDim>
void launch_backward(const AttentionBackwardParams& bp, const DropoutSeed& seed, const BackwardBuffers& buffers,
                     cudaStream_t stream);

}  // namespace selfattn::cuda::tc
