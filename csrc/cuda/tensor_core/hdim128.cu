// The tensor-core kernels for head dim 128 (head dims up to 128 are padded to it).
#include "cuda/tensor_core/launch.cuh"

namespace selfattn::cuda::tc {
SELFATTN_INSTANTIATE_HEAD_DIM(128)
}  // namespace selfattn::cuda::tc
