// The Hopper forward for head dim 128.
#include "cuda/hopper/launch.cuh"

namespace selfattn::cuda::hopper {
SELFATTN_INSTANTIATE_HOPPER_HEAD_DIM(128)
}  // namespace selfattn::cuda::hopper
