// The copy engine (TMA): one thread asks for a whole tile of a tensor, the
// engine moves it into shared memory in the layout the tensor map says
// (here 128-byte swizzled, which is what wgmma reads) and counts the bytes
// onto a SharedBarrier. Rows past the tensor's end arrive as zeros and still
// count, so partial tiles need no special case. The tensor map is built on
// the host (hopper/tensor_map.cu) and passed as a __grid_constant__ kernel
// parameter, whose address the instruction takes.
//
// Device code for sm_90 only (see arch.cuh).
#pragma once

#include <cuda.h>

#include <cstdint>

#include "cuda/hopper/barrier.cuh"

namespace selfattn::cuda::hopper {

// Coordinates of a tile's first element in a 4-D tensor map, innermost
// dimension first: (column, row, head, batch).
struct TileCoordinates {
  int32_t col, row, head, batch;
};

__device__ __forceinline__ void copy_tile_async(uint32_t smem_address, const CUtensorMap& map,
                                                TileCoordinates at, SharedBarrier& done) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
      "[%6];\n" ::"r"(smem_address),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(at.col), "r"(at.row), "r"(at.head), "r"(at.batch),
      "r"(done.address())
      : "memory");
}

// Fetches the tensor map itself ahead of the first copy that reads it.
__device__ __forceinline__ void prefetch_tensor_map(const CUtensorMap& map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&map)) : "memory");
}

}  // namespace selfattn::cuda::hopper
