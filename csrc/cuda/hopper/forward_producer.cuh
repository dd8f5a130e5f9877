// The producer of the Hopper forward: one thread of warpgroup 0 asks the
// copy engine for Q (both consumers' halves, one barrier) and then for the
// key tiles, last first, in the order the consumers use them:
//   K[n-1], then K[n-2] and V[n-1], then K[n-3] and V[n-2], ... , V[0].
// Each K and V goes into its own ring of stages; a stage is refilled only
// after its "empty" barrier says both consumers are done with it (K after
// Q·Kᵀ, V after P·V), and each load completes on the stage's "full"
// barrier, which announced the tile's bytes (PipelineTmaAsync).
#pragma once

#include "cuda/hopper/barrier_waits.cuh"
#include "cuda/hopper/forward_block.cuh"
#include "cuda/hopper/forward_params.cuh"

namespace selfattn::cuda::hopper {

template <typename Traits>
__device__ __forceinline__ void load_tiles(const ForwardParams<Traits>& params, const ForwardBlock& block,
                                           typename Traits::SharedStorage& shared,
                                           typename Traits::PipelineKV& pipeline_k,
                                           typename Traits::PipelineKV& pipeline_v) {
  using Rows = typename Traits::Rows;
  using Dim = typename Traits::Dim;
  using BlockN = typename Traits::BlockN;
  Tensor sQ = make_tensor(make_smem_ptr(shared.q.data()), typename Traits::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(shared.k.data()), typename Traits::SmemLayoutKV{});
  Tensor sV = make_tensor(make_smem_ptr(shared.v.data()), typename Traits::SmemLayoutKV{});

  // The block's slices of the global tensors: Q by 64-row halves, K and V
  // by key tiles (the copy engine fills rows past the end with zeros).
  Tensor mQ = params.load_q.get_tma_tensor(params.q_shape)(_, _, block.head, block.batch);
  Tensor mK = params.load_k.get_tma_tensor(params.kv_shape)(_, _, block.kv_head, block.batch);
  Tensor mV = params.load_v.get_tma_tensor(params.kv_shape)(_, _, block.kv_head, block.batch);
  Tensor gQ = local_tile(mQ, Shape<Rows, Dim>{}, make_coord(_, _0{}));     // (64, dim, halves)
  Tensor gK = local_tile(mK, Shape<BlockN, Dim>{}, make_coord(_, _0{}));   // (keys, dim, tiles)
  Tensor gV = local_tile(mV, Shape<BlockN, Dim>{}, make_coord(_, _0{}));
  const auto q_parts = tma_partition(params.load_q, _0{}, Layout<_1>{}, group_modes<0, 2>(sQ), group_modes<0, 2>(gQ));
  Tensor tQg = get<0>(q_parts);  // (box, half)
  Tensor tQs = get<1>(q_parts);  // (box, half)
  const auto k_parts = tma_partition(params.load_k, _0{}, Layout<_1>{}, group_modes<0, 2>(sK), group_modes<0, 2>(gK));
  Tensor tKg = get<0>(k_parts);  // (box, tile)
  Tensor tKs = get<1>(k_parts);  // (box, stage)
  const auto v_parts = tma_partition(params.load_v, _0{}, Layout<_1>{}, group_modes<0, 2>(sV), group_modes<0, 2>(gV));
  Tensor tVg = get<0>(v_parts);  // (box, tile)
  Tensor tVs = get<1>(v_parts);  // (box, stage)

  shared.q_full.arrive_and_expect_tx(Traits::kQBytes);
#pragma unroll
  for (int half = 0; half < kConsumers; ++half) {
    copy(params.load_q.with(reinterpret_cast<uint64_t&>(shared.q_full)), tQg(_, block.m_block * kConsumers + half),
         tQs(_, half));
  }

  // K and V have a write position each: V trails K by one tile.
  auto k_write = cutlass::make_producer_start_state<typename Traits::PipelineKV>();
  auto v_write = k_write;
  auto load_k = [&](int n) {
    acquire_empty(pipeline_k, k_write, "k_empty");
    copy(params.load_k.with(*pipeline_k.producer_get_barrier(k_write)), tKg(_, n), tKs(_, k_write.index()));
    ++k_write;
  };
  auto load_v = [&](int n) {
    acquire_empty(pipeline_v, v_write, "v_empty");
    copy(params.load_v.with(*pipeline_v.producer_get_barrier(v_write)), tVg(_, n), tVs(_, v_write.index()));
    ++v_write;
  };
  load_k(block.n_tiles - 1);
  for (int n = block.n_tiles - 1; n > 0; --n) {
    load_k(n - 1);
    load_v(n);
  }
  load_v(0);
}

}  // namespace selfattn::cuda::hopper
