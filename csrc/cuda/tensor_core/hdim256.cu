// The tensor-core kernels for head dim 256 (head dims up to 256 are padded to it).
#include "cuda/tensor_core/launch.cuh"

namespace selfattn::cuda::tc {
SELFATTN_INSTANTIATE_HEAD_DIM(256)
}  // namespace selfattn::cuda::tc
