// The tensor-core kernels for head dim 96 (head dims up to 96 are padded to it).
#include "cuda/tensor_core/launch.cuh"

namespace selfattn::cuda::tc {
SELFATTN_INSTANTIATE_HEAD_DIM(96)
}  // namespace selfattn::cuda::tc
