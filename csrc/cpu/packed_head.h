// A key/value head packed once for the matrix units, and the products that
// read it, tile by tile of kKeyTile keys. Each product is a call per block of
// kPackedBlock columns: the block of the right operand (at most 16 KiB at
// width 128) stays in L1 while the call sweeps the rows of the left one. As
// one call over a whole tile (its packed rows 2 KiB apart), the forward's
// two products took about 1.4× as long (measured on AMX at L = 4096,
// E = 128, one thread).
//
// Two packings of a (len × width) head M:
//   - transposed, for A·Mᵀ (scores Q·Kᵀ, dO·Vᵀ): Mᵀ of each block of
//     kPackedBlock keys, the block at packed + first key · width;
//   - rows, for A·M (P·V, dS·K): each tile of keys at packed + col0 · width,
//     in blocks of kPackedBlock columns of M, block j after j·(its key count,
//     rounded up to even) rows.
#pragma once

#include <algorithm>

#include "cpu/bf16_layouts.h"
#include "cpu/bf16_matrix_units.h"
#include "cpu/tile_ops.h"

namespace selfattn::cpu {

// Elements either packing of a (len × width) head takes.
inline int64_t packed_head_size(int64_t len, int64_t width) { return (len + 1) * width; }

inline void pack_head_transposed(const TensorView& m, int64_t b, int64_t h, int64_t len, int64_t width,
                                 uint16_t* packed) {
  for (int64_t c = 0; c < len; c += kPackedBlock) {
    pack_transposed(m, b, h, c, std::min(kPackedBlock, len - c), width, packed + c * width);
  }
}

// The rows of the tile of keys from col0 as packed: an odd count gets a zero row.
inline int64_t packed_tile_rows(int64_t len, int64_t col0) {
  const int64_t rows = std::min(kKeyTile, len - col0);
  return rows + rows % 2;
}

inline void pack_head_rows(const TensorView& m, int64_t b, int64_t h, int64_t len, int64_t width, uint16_t* packed) {
  for (int64_t col0 = 0; col0 < len; col0 += kKeyTile) {
    const int64_t rows = std::min(kKeyTile, len - col0);
    for (int64_t j = 0; j < width; j += kPackedBlock) {
      pack_rows(m, b, h, col0, rows, j, std::min(kPackedBlock, width - j),
                packed + col0 * width + packed_tile_rows(len, col0) * j);
    }
  }
}

// C[rows × cols] = A·Mᵀ for keys [col0, col0 + cols) of one tile, A row-major
// bfloat16 (rows × width). The tile may use fewer keys than were packed with it.
inline void product_with_transposed(int64_t rows, int64_t cols, int64_t width, const uint16_t* a, int64_t lda,
                                    const uint16_t* packed, int64_t len, int64_t col0, float* c, int64_t ldc) {
  const int64_t packed_cols = std::min(kKeyTile, len - col0);
  for (int64_t j = 0; j < cols; j += kPackedBlock) {
    bf16_product(rows, std::min(kPackedBlock, cols - j), width, a, lda, packed + (col0 + j) * width,
                 std::min(kPackedBlock, packed_cols - j), c + j, ldc, false);
  }
}

// C[rows × width] += A·M over keys [col0, col0 + cols) of one tile, A row-major
// bfloat16 (rows × cols, with a zero column after an odd cols).
inline void add_product_with_rows(int64_t rows, int64_t width, int64_t cols, const uint16_t* a, int64_t lda,
                                  const uint16_t* packed, int64_t len, int64_t col0, float* c, int64_t ldc) {
  for (int64_t j = 0; j < width; j += kPackedBlock) {
    const int64_t n = std::min(kPackedBlock, width - j);
    bf16_product(rows, n, cols, a, lda, packed + col0 * width + packed_tile_rows(len, col0) * j, n, c + j, ldc, true);
  }
}

}  // namespace selfattn::cpu
