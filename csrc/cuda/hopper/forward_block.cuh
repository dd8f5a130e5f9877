// Which rows, head and key tiles a block of the Hopper forward works on.
// Producer and consumers compute it alike from blockIdx, so they agree on
// the number of tiles without talking.
#pragma once

#include <cstdint>

#include "cuda/hopper/forward_params.cuh"

namespace selfattn::cuda::hopper {

struct ForwardBlock {
  int m_block;  // the block's 128 query rows start at m_block · kBlockM
  int head, kv_head, batch;
  int n_tiles;  // key tiles holding a key some row of the block sees; they run last first
};

template <typename Traits>
__device__ __forceinline__ ForwardBlock forward_block(const ForwardParams<Traits>& params) {
  ForwardBlock block;
  const int m_index = static_cast<int>(blockIdx.x % params.m_blocks);
  const int head_index = static_cast<int>(blockIdx.x / params.m_blocks);
  // Under causal masking the bottom row blocks, which see the most keys,
  // start first, so the grid's tail is short blocks.
  block.m_block = params.causal ? params.m_blocks - 1 - m_index : m_index;
  block.head = head_index % params.q_heads;
  block.batch = head_index / params.q_heads;
  block.kv_head = block.head / params.group_size;
  const int row_end = (block.m_block + 1) * Traits::kBlockM;
  const int visible = params.causal && row_end < params.kv_len ? row_end : params.kv_len;
  block.n_tiles = (visible + Traits::kBlockN - 1) / Traits::kBlockN;
  return block;
}

}  // namespace selfattn::cuda::hopper
