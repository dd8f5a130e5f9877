// The end of a consumer warpgroup: O / rowsum rounded to 16 bits, into the
// warpgroup's half of Q's shared memory (its last Q·Kᵀ is done, and the
// other consumer never reads this half), then out by one TMA store, which
// drops rows past q_len; the logsumexp goes straight from registers, one
// thread per row, into the (batch, q_heads, q_len) float32 array the sm_80
// backward reads.
#pragma once

#include <cutlass/arch/barrier.h>

#include "cuda/hopper/forward_consumer.cuh"

namespace selfattn::cuda::hopper {

template <typename Traits>
__device__ __forceinline__ void store_output(const ForwardParams<Traits>& params, const ForwardBlock& block,
                                             typename Traits::SharedStorage& shared, int consumer,
                                             ConsumerResult<Traits>& result) {
  using Element = typename Traits::Element;
  const int thread = static_cast<int>(threadIdx.x % kWarpgroupThreads);
  const int warp = thread / 32, lane = thread % 32;
  const int first_row = block.m_block * Traits::kBlockM + consumer * Traits::kConsumerRows + 16 * warp + lane / 4;

  float factor[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float logsumexp;
    finish_row(result.softmax, h, params.scale, factor[h], logsumexp);
    const int row = first_row + 8 * h;
    if (lane % 4 == 0 && row < params.q_len) {
      const int64_t head_row = static_cast<int64_t>(block.batch) * params.q_heads + block.head;
      params.logsumexp[head_row * params.q_len + row] = logsumexp;
    }
  }
  rescale_rows(result.o, factor);
  Tensor rO = make_tensor_like<Element>(result.o);
  convert_fragment(result.o, rO);

  // Registers to shared memory with stmatrix, in the swizzled layout the
  // TMA store reads.
  Tensor sO = make_tensor(make_smem_ptr(shared.q.data()), typename Traits::SmemLayoutQ{})(_, _, consumer);
  auto smem_copy = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, Element>{}, typename Traits::MmaPV{});
  auto thread_copy = smem_copy.get_thread_slice(thread);
  copy(smem_copy, thread_copy.retile_S(rO), thread_copy.partition_D(sO));
  // The copy engine reads what ordinary stores wrote: fence to the async
  // proxy in every writing thread, then gather the warpgroup.
  cutlass::arch::fence_view_async_shared();
  const auto epilogue = consumer == 0 ? ForwardBarrier::kEpilogue0 : ForwardBarrier::kEpilogue1;
  cutlass::arch::NamedBarrier::sync(kWarpgroupThreads, static_cast<uint32_t>(epilogue));
  if (thread == 0) {
    Tensor mO = params.store_o.get_tma_tensor(params.q_shape)(_, _, block.head, block.batch);
    Tensor gO = local_tile(mO, Shape<typename Traits::Rows, typename Traits::Dim>{},
                           make_coord(block.m_block * kConsumers + consumer, _0{}));
    auto [tOg, tOs] = tma_partition(params.store_o, _0{}, Layout<_1>{}, group_modes<0, 2>(sO), group_modes<0, 2>(gO));
    copy(params.store_o, tOs, tOg);
    tma_store_arrive();
    tma_store_wait<0>();  // the shared memory must outlive the read
  }
}

}  // namespace selfattn::cuda::hopper
