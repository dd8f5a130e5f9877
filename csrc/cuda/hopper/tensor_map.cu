#include "cuda/hopper/tensor_map.h"

#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <cstdint>
#include <limits>

namespace selfattn::cuda::hopper {
namespace {

using EncodeTiled = PFN_cuTensorMapEncodeTiled_v12000;

EncodeTiled encode_tiled_function() {
  static const EncodeTiled function = [] {
    void* address = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
    const cudaError_t error =
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &address, 12000, cudaEnableDefault, &found);
#else
    const cudaError_t error = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &address, cudaEnableDefault, &found);
#endif
    const bool ok = error == cudaSuccess && found == cudaDriverEntryPointSuccess && address != nullptr;
    return ok ? reinterpret_cast<EncodeTiled>(address) : nullptr;
  }();
  return function;
}

bool fits_coordinates(int64_t n) { return n >= 1 && n <= std::numeric_limits<int32_t>::max(); }

}  // namespace

std::optional<CUtensorMap> encode_tile_map(const TiledTensor& t) {
  const EncodeTiled encode = encode_tiled_function();
  const bool sixteen_bit = t.dtype == ElementType::Float16 || t.dtype == ElementType::BFloat16;
  if (encode == nullptr || !sixteen_bit || t.view.stride.col != 1) return std::nullopt;
  if (!fits_coordinates(t.batch) || !fits_coordinates(t.heads) || !fits_coordinates(t.rows) ||
      !fits_coordinates(t.cols)) {
    return std::nullopt;
  }
  // Innermost dimension first. A dimension of size 1 is never stepped over,
  // so its stride is replaced by the packed one, which keeps whatever stride
  // the tensor happens to carry there (often 1) from failing the driver's
  // checks. A stride of 0 elsewhere (a broadcast) is declined, and so is
  // anything the driver's rules exclude, before the driver is asked.
  constexpr int64_t kElementBytes = 2;
  const int64_t sizes[4] = {t.cols, t.rows, t.heads, t.batch};
  const int64_t strides[4] = {1, t.view.stride.row, t.view.stride.head, t.view.stride.batch};
  cuuint64_t global_dims[4];
  cuuint64_t global_strides[3];
  int64_t packed_bytes = t.cols * kElementBytes;
  if (reinterpret_cast<uintptr_t>(t.view.data) % 16 != 0) return std::nullopt;
  for (int d = 0; d < 4; ++d) {
    global_dims[d] = static_cast<cuuint64_t>(sizes[d]);
    if (d == 0) continue;
    const int64_t stride_bytes = sizes[d] == 1 ? packed_bytes : strides[d] * kElementBytes;
    if (stride_bytes <= 0 || stride_bytes % 16 != 0 || stride_bytes >= (int64_t{1} << 40)) return std::nullopt;
    global_strides[d - 1] = static_cast<cuuint64_t>(stride_bytes);
    packed_bytes = stride_bytes * sizes[d];
  }
  const cuuint32_t box[4] = {64, static_cast<cuuint32_t>(t.box_rows), 1, 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  CUtensorMap map;
  const CUresult result =
      encode(&map, t.dtype == ElementType::Float16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
             4, t.view.data, global_dims, global_strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
             CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (result != CUDA_SUCCESS) return std::nullopt;
  return map;
}

}  // namespace selfattn::cuda::hopper
