// A tile of 16-bit elements in shared memory in the one layout both the copy
// engine and wgmma speak: 128-byte swizzle. The tile's columns are cut into
// panels of 64 (128 bytes); each panel holds the tile's rows one after
// another, 128 bytes a row, and within a row the 16-byte chunk c of row r is
// stored at chunk c ^ (r % 8). The pattern repeats every 8 rows (1024 bytes),
// so the tile starts on a 1024-byte boundary and every sub-tile handed to
// wgmma starts on a multiple of 8 rows.
//
// wgmma reads shared memory through a 64-bit descriptor: the start address,
// the byte distance between groups of 8 rows ("stride"), between panels
// ("leading", where the product spans several) and the swizzle mode.
//
// Device code for sm_90a only (see arch.cuh).
#pragma once

#include <cstdint>

#include "cuda/hopper/tma.cuh"

namespace selfattn::cuda::hopper {

constexpr int kSwizzleBytes = 128;
constexpr int kSwizzleAtomBytes = 8 * kSwizzleBytes;  // 8 rows: where the pattern repeats

// A wgmma matrix descriptor for 128-byte swizzled shared memory.
__device__ __forceinline__ uint64_t swizzled_descriptor(uint32_t address, uint32_t leading_bytes,
                                                        uint32_t stride_bytes) {
  constexpr uint64_t kSwizzle128B = 1;
  return static_cast<uint64_t>((address & 0x3FFFF) >> 4) | static_cast<uint64_t>(leading_bytes >> 4) << 16 |
         static_cast<uint64_t>(stride_bytes >> 4) << 32 | kSwizzle128B << 62;
}

template <typename T, int kRows, int kCols>
struct SwizzledTile {
  static constexpr int kPanelCols = kSwizzleBytes / static_cast<int>(sizeof(T));
  static constexpr int kPanels = kCols / kPanelCols;
  static constexpr int kPanelBytes = kRows * kSwizzleBytes;
  static constexpr int kBytes = kPanels * kPanelBytes;
  static_assert(kCols % kPanelCols == 0, "whole panels of 128 bytes");
  static_assert(kPanelBytes % kSwizzleAtomBytes == 0, "panels keep the 1024-byte alignment");

  uint32_t base;  // shared-memory address, 1024-byte aligned

  // Rows [row0, row0 + kRows) of one (batch, head) matrix of the tensor map,
  // whose box is one panel (kPanelCols × kRows): a copy per panel, all
  // counted onto `done`.
  __device__ __forceinline__ void load(const CUtensorMap& map, int row0, int head, int batch,
                                       SharedBarrier& done) const {
#pragma unroll
    for (int panel = 0; panel < kPanels; ++panel) {
      copy_tile_async(base + panel * kPanelBytes, map, {panel * kPanelCols, row0, head, batch}, done);
    }
  }

  // The tile as a K-major operand (its columns are the product's K): rows
  // from row0 (a multiple of 8) as M or N, columns [k0, k0 + 16) as K. The
  // 16 columns lie inside one panel's row, so only the stride between groups
  // of 8 rows matters; moving along K inside a panel moves the start address
  // by 32 bytes, and the hardware applies the swizzle to the sum.
  __device__ __forceinline__ uint64_t k_major(int row0, int k0) const {
    const uint32_t address = base + (k0 / kPanelCols) * kPanelBytes + row0 * kSwizzleBytes +
                             (k0 % kPanelCols) * static_cast<int>(sizeof(T));
    return swizzled_descriptor(address, 16, kSwizzleAtomBytes);
  }

  // The tile as an MN-major operand (its rows are the product's K, as V's
  // are in P·V): rows [k0, k0 + 16) as K, every column as N, one panel after
  // the other.
  __device__ __forceinline__ uint64_t mn_major(int k0) const {
    return swizzled_descriptor(base + k0 * kSwizzleBytes, kPanelBytes, kSwizzleAtomBytes);
  }
};

}  // namespace selfattn::cuda::hopper
