// The tensor-core kernels for head dim 32 (head dims up to 32 are padded to it).
#include "cuda/tensor_core/launch.cuh"

namespace selfattn::cuda::tc {
SELFATTN_INSTANTIATE_HEAD_DIM(32)
}  // namespace selfattn::cuda::tc
