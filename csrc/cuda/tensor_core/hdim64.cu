// The tensor-core kernels for head dim 64 (head dims up to 64 are padded to it).
#include "cuda/tensor_core/launch.cuh"

namespace selfattn::cuda::tc {
SELFATTN_INSTANTIATE_HEAD_DIM(64)
}  // namespace selfattn::cuda::tc
