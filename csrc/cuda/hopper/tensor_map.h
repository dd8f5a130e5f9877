// Tensor maps for the copy engine, built on the host. cuTensorMapEncodeTiled
// is a driver function; it is looked up through the runtime
// (cudaGetDriverEntryPointByVersion) so that the extension does not link
// libcuda itself, as PyTorch's own extensions do not.
#pragma once

#include <cuda.h>

#include <optional>

#include "common/attention_params.h"

namespace selfattn::cuda::hopper {

// The shape of a 16-bit (batch, heads, rows, cols) tensor as the copy engine
// reads it: boxes of box_rows rows × 64 columns (one 128-byte swizzle panel),
// rows past `rows` read as zeros.
struct TiledTensor {
  TensorView view;
  ElementType dtype;
  int64_t batch, heads, rows, cols;
  int box_rows;
};

// The map, or nothing where the driver cannot describe the tensor (a base
// address or a stride that is not a multiple of 16 bytes, a column stride
// other than 1, a broadcast stride of 0, sizes past 2^31 - 1) or cannot be
// reached.
std::optional<CUtensorMap> encode_tile_map(const TiledTensor& t);

}  // namespace selfattn::cuda::hopper
