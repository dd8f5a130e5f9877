// A tile of 16-bit elements in shared memory, rows × cols, stored row by row
// in 16-byte chunks with the chunk index XOR-ed by the row's low three bits.
// ldmatrix reads one chunk from each of eight consecutive rows; the swizzle
// puts those eight chunks in eight different bank groups, so neither those
// reads nor the cp.async writes of whole rows conflict. Rows are padded to a
// multiple of 64 elements (eight chunks) so the XOR stays inside the row.
#pragma once

#include "cuda/tensor_core/warp_ops.cuh"

namespace selfattn::cuda::tc {

template <typename T, int kRows, int kCols>
struct SharedTile {
  static constexpr int kStride = (kCols + 63) / 64 * 64;  // elements per stored row
  static constexpr int kBytes = kRows * kStride * static_cast<int>(sizeof(T));

  T* base;

  __device__ __forceinline__ T* element(int row, int col) const {
    return base + row * kStride + (((col >> 3) ^ (row & 7)) << 3) + (col & 7);
  }

  // Rows [0, kRows) × columns [0, kCols) from a global matrix whose rows are
  // `row_stride` elements apart, with cp.async. Rows from `rows` on and
  // columns from `cols` on (a multiple of 8) are filled with zeros instead.
  template <int kThreads>
  __device__ __forceinline__ void load_async(const T* gmem, int64_t row_stride, int rows, int cols) const {
    constexpr int kChunks = kCols / 8;
    static_assert(kRows * kChunks % kThreads == 0, "every thread copies the same number of chunks");
#pragma unroll
    for (int i = 0; i < kRows * kChunks / kThreads; ++i) {
      const int chunk = i * kThreads + static_cast<int>(threadIdx.x);
      const int row = chunk / kChunks, col = chunk % kChunks * 8;
      const bool valid = row < rows && col < cols;
      copy_16_bytes_async(element(row, col), valid ? gmem + row * row_stride + col : gmem, valid);
    }
  }

  // The address of the 8×8 matrix row that a lane hands to ldmatrix, for a
  // fragment at tile row row0 (a multiple of 8) and column col0 (a multiple
  // of 16): the lane's own row offset r < 16 and chunk offset c ∈ {0, 1}.
  // Because row0 keeps the row's low three bits and col0 only moves whole
  // pairs of chunks, the swizzle of (row0, col0) is an XOR of a constant into
  // the lane's address, which needs no registers of its own once unrolled.
  __device__ __forceinline__ uint32_t matrix_row_address(int row0, int col0, int r, int c) const {
    const uint32_t lane_part = shared_address(base) + r * kStride * 2 + ((c ^ (r & 7)) << 4);
    return (lane_part + row0 * kStride * 2 + (col0 >> 6) * 128) ^ (((col0 >> 3) & 7) << 4);
  }

  // The A fragment of rows [row0, row0 + 16) × columns [col0, col0 + 16).
  __device__ __forceinline__ void load_a(uint32_t (&a)[4], int row0, int col0) const {
    const int lane = static_cast<int>(threadIdx.x) & 31;
    load_matrix_x4(a, matrix_row_address(row0, col0, lane & 15, lane >> 4));
  }

  // The A fragment of the transpose of this tile: rows [row0, row0 + 16) of
  // the transpose are columns of the tile, and its columns [col0, col0 + 16)
  // are rows of the tile.
  __device__ __forceinline__ void load_a_of_transpose(uint32_t (&a)[4], int row0, int col0) const {
    const int lane = static_cast<int>(threadIdx.x) & 31, matrix = lane >> 3;
    load_matrix_x4_transposed(a, matrix_row_address(col0, row0, (lane & 7) + (matrix >> 1) * 8, matrix & 1));
  }

  // B fragments of two adjacent n-blocks of B = tileᵀ, for a tile stored
  // n-major (K in Q·Kᵀ): n = tile rows [row0, row0 + 16), k = tile columns
  // [col0, col0 + 16). b[0], b[1] serve n-block row0, b[2], b[3] n-block row0 + 8.
  __device__ __forceinline__ void load_b_pair_of_transpose(uint32_t (&b)[4], int row0, int col0) const {
    const int lane = static_cast<int>(threadIdx.x) & 31, matrix = lane >> 3;
    load_matrix_x4(b, matrix_row_address(row0, col0, (lane & 7) + (matrix >> 1) * 8, matrix & 1));
  }

  // B fragments of two adjacent n-blocks of B = tile, for a tile stored
  // k-major (V in P·V): k = tile rows [row0, row0 + 16), n = tile columns
  // [col0, col0 + 16). b[0], b[1] serve n-block col0, b[2], b[3] n-block col0 + 8.
  __device__ __forceinline__ void load_b_pair(uint32_t (&b)[4], int row0, int col0) const {
    const int lane = static_cast<int>(threadIdx.x) & 31;
    load_matrix_x4_transposed(b, matrix_row_address(row0, col0, lane & 15, lane >> 4));
  }

  // Writes a C fragment's pair (row, col), (row, col + 1) as two 16-bit values.
  __device__ __forceinline__ void store_pair(int row, int col, uint32_t pair) const {
    *reinterpret_cast<uint32_t*>(element(row, col)) = pair;
  }
};

}  // namespace selfattn::cuda::tc
