// The Hopper forward for head dim 128, fp16 and bf16.
#include "cuda/hopper/cutlass_config.h"
// (first: it configures CUTLASS)
#include "cuda/hopper/launch.cuh"

namespace selfattn::cuda::hopper {
SELFATTN_INSTANTIATE_HOPPER_FORWARD(128)
}  // namespace selfattn::cuda::hopper
