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

  // Byte offset of the 16-byte chunk that holds (row, col), col a multiple of 8.
  static __device__ __forceinline__ uint32_t chunk_offset(int row, int col) {
    return static_cast<uint32_t>((row * kStride + (((col >> 3) ^ (row & 7)) << 3)) * static_cast<int>(sizeof(T)));
  }

  // The address of the 8×8 matrix row that a lane hands to ldmatrix, for a
  // fragment at tile row row0 (a multiple of 8) and column col0 (a multiple
  // of 16): the lane's own row offset r < 16 and chunk offset c ∈ {0, 1}.
  // row0 keeps the row's low three bits and col0 moves whole pairs of
  // chunks, so the swizzle of (row0, col0) is an XOR of one of four
  // constants into the lane's part (bits 4–6, which the 128-byte multiples
  // of the rest never carry into), and the rest an offset that ldmatrix
  // takes as an immediate: once unrolled, four registers serve a tile.
  __device__ __forceinline__ uint32_t matrix_row_address(int row0, int col0, int r, int c) const {
    const uint32_t lane_part = shared_address(base) + r * kStride * 2 + ((c ^ (r & 7)) << 4);
    return (lane_part ^ (((col0 >> 3) & 7) << 4)) + row0 * kStride * 2 + (col0 >> 6) * 128;
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

// One thread's part in copying kRows × kCols tiles of a global matrix into
// SharedTiles with cp.async. A thread copies the same column chunk of rows
// row, row + kRowStep, ..., so a tile costs one pointer step per chunk; the
// thread's offsets are worked out from the thread index and the matrix's
// stride (a kernel parameter) at each tile, so that nothing of the copy
// holds a register across a kernel's main loop. Columns from `cols` on (a
// head dim's padding) are zero-filled, and so are rows from `rows` on in the
// last, partial tile of a matrix.
template <typename T, int kRows, int kCols, int kThreads>
struct TileCopy {
  using Tile = SharedTile<T, kRows, kCols>;
  // 16-byte chunks in a row: the matrix's, or, where the threads do not
  // divide into those (head dim 96), every stored chunk, padding included
  // (zero-filled like any column past the matrix's).
  static constexpr int kChunks = kThreads % (kCols / 8) == 0 ? kCols / 8 : Tile::kStride / 8;
  static_assert(kThreads % kChunks == 0, "each thread keeps to one column chunk");
  static constexpr int kRowStep = kThreads / kChunks;
  static_assert(kRows % kRowStep == 0, "every thread copies the same number of chunks");

  int64_t row_stride;  // elements between the matrix's rows
  int cols;            // the matrix's columns, a multiple of 8

  // The tile whose row 0 is at `src` into `tile`.
  __device__ __forceinline__ void whole(const Tile& tile, const T* src) const { copy<false>(tile, src, kRows); }

  // The same for the last tile of a matrix, of which only the first `rows`
  // rows exist: the others become zeros.
  __device__ __forceinline__ void first_rows(const Tile& tile, const T* src, int rows) const {
    copy<true>(tile, src, rows);
  }

 private:
  template <bool kPartial>
  __device__ __forceinline__ void copy(const Tile& tile, const T* src, int rows) const {
    const int thread = static_cast<int>(threadIdx.x);
    const int row0 = thread / kChunks, col = thread % kChunks * 8;
    const bool col_inside = col < cols;
    const T* from = src + row0 * row_stride + (col_inside ? col : 0);
    const uint32_t tile_address = shared_address(tile.base);
#pragma unroll
    for (int i = 0; i < kRows / kRowStep; ++i) {
      const int row = row0 + i * kRowStep;
      // A step of a multiple of 8 rows keeps the swizzle: the offset is then
      // a constant, which the copy instruction takes as an immediate.
      const uint32_t to = kRowStep % 8 == 0
                              ? tile_address + Tile::chunk_offset(row0, col) + i * kRowStep * Tile::kStride * sizeof(T)
                              : tile_address + Tile::chunk_offset(row, col);
      // A column past the matrix's reads nothing from a row that exists.
      const bool row_inside = !kPartial || row < rows;
      copy_16_bytes_async(to, row_inside ? from : src, row_inside && col_inside ? 16 : 0);
      from += kRowStep * row_stride;
    }
  }
};

}  // namespace selfattn::cuda::tc
