#include <stdexcept>
#include <string>

#include "cuda/device/elements.cuh"

namespace selfattn::cuda {

void check_launch(const char* kernel) {
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) {
    throw std::runtime_error(std::string("selfattn: launching the ") + kernel + " kernel failed: " +
                             cudaGetErrorString(error));
  }
}

}  // namespace selfattn::cuda
