// The Hopper forward for head dim 64.
#include "cuda/hopper/launch.cuh"

namespace selfattn::cuda::hopper {
SELFATTN_INSTANTIATE_HOPPER_HEAD_DIM(64)
}  // namespace selfattn::cuda::hopper
