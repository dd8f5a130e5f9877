// What the Hopper forward kernel receives, by value as one __grid_constant__
// parameter: the copy engine's descriptors (whose addresses the TMA
// instructions take, so they must stay in parameter space) and the few
// scalars the kernel reads. Built on the host by launch.cuh.
#pragma once

#include <cstdint>

#include "cuda/hopper/forward_traits.cuh"

namespace selfattn::cuda::hopper {

template <typename Traits>
struct ForwardParams {
  typename Traits::TmaLoadQ load_q;
  typename Traits::TmaLoadKV load_k;
  typename Traits::TmaLoadKV load_v;
  typename Traits::TmaStoreO store_o;
  // The TMA views' extents, (rows, dim, heads, batch), for get_tma_tensor.
  typename Traits::GmemShape q_shape, kv_shape;

  float* logsumexp;  // (batch, q_heads, q_len) float32, the sm_80 kernels' layout
  int32_t q_len, kv_len;
  int32_t q_heads, group_size;  // query head h reads kv head h / group_size
  int32_t m_blocks;             // ceil(q_len / kBlockM)
  float scale_log2;             // scale · log2(e), > 0 (the host declines the rest)
  float scale;
  bool causal;                  // top-left: query i sees keys 0 .. i
};

}  // namespace selfattn::cuda::hopper
