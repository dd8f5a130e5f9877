// FlashAttention forward for Hopper (sm_90a), warp-specialised and built on
// CuTe. One block: 128 query rows of one (batch, head), three warpgroups.
//   warpgroup 0, the producer: setmaxnreg down to 24 registers; one thread
//     issues every TMA load (forward_producer.cuh).
//   warpgroups 1 and 2, the consumers: setmaxnreg up to 240; 64 rows each,
//     ping-ponging on named barriers (pingpong.cuh), each overlapping its
//     softmax with its own P·V (forward_consumer.cuh), then O and the
//     logsumexp out (forward_epilogue.cuh).
// Only SDPA's forward without mask or dropout, which the host checks
// (dispatch.cu); the rest stays on the sm_80 kernels.
#pragma once

#include <cutlass/arch/reg_reconfig.h>

#include "cuda/hopper/arch.cuh"
#include "cuda/hopper/forward_epilogue.cuh"
#include "cuda/hopper/forward_producer.cuh"

namespace selfattn::cuda::hopper {

template <typename Traits>
__global__ void __launch_bounds__(Traits::kThreads, 1)
    hopper_forward_kernel(const __grid_constant__ ForwardParams<Traits> params) {
#if defined(SELFATTN_HOPPER_DEVICE_PASS)
  // The swizzled tiles need their 1024-byte pattern aligned; the launch asks
  // for 1 KB more than the storage to allow for it.
  extern __shared__ unsigned char dynamic_shared[];
  const uintptr_t base = reinterpret_cast<uintptr_t>(dynamic_shared);
  auto& shared = *reinterpret_cast<typename Traits::SharedStorage*>((base + 1023) / 1024 * 1024);

  // Broadcast from lane 0, so that ptxas knows it is the same in every lane
  // of a warp: what derives from it (each consumer's Q descriptors) can then
  // live in uniform registers instead of being moved there before each wgmma.
  const int warpgroup = cutlass::canonical_warp_group_idx();
  const bool producer = warpgroup == 0;
  const ForwardBlock block = forward_block(params);

  if (threadIdx.x == 0) {
    prefetch_tma_descriptor(params.load_q.get_tma_descriptor());
    prefetch_tma_descriptor(params.load_k.get_tma_descriptor());
    prefetch_tma_descriptor(params.load_v.get_tma_descriptor());
    prefetch_tma_descriptor(params.store_o.get_tma_descriptor());
    shared.q_full.init(1);
  }
  // Both rings: one arrival (with the tile's bytes) fills a stage, every
  // consumer thread's arrival empties it. Warp 0 initialises the barriers.
  typename Traits::PipelineKV::Params pipeline_params;
  pipeline_params.transaction_bytes = Traits::kKVBytes;
  pipeline_params.role = producer ? Traits::PipelineKV::ThreadCategory::Producer
                                  : Traits::PipelineKV::ThreadCategory::Consumer;
  pipeline_params.is_leader = threadIdx.x == 0;
  pipeline_params.num_consumers = kConsumers * kWarpgroupThreads;
  typename Traits::PipelineKV pipeline_k(shared.pipeline_k, pipeline_params, Shape<_1, _1, _1>{});
  typename Traits::PipelineKV pipeline_v(shared.pipeline_v, pipeline_params, Shape<_1, _1, _1>{});
  cutlass::arch::fence_barrier_init();
  __syncthreads();

  if (producer) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegisters>();
    if (threadIdx.x == 0) load_tiles(params, block, shared, pipeline_k, pipeline_v);
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegisters>();
    const PingPong turn{warpgroup - 1};
    turn.start();
    ConsumerResult<Traits> result;
    attend(params, block, shared, pipeline_k, pipeline_v, turn, result);
    store_output(params, block, shared, turn.consumer, result);
  }
#else
  __trap();  // never launched: the host checks the device and the build (dispatch.cu)
#endif
}

}  // namespace selfattn::cuda::hopper
