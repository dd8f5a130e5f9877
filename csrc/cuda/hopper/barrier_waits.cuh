// Every mbarrier wait of the Hopper forward, in one place, so that a
// diagnostic build can make a hang name itself.
//
// Normally each is CUTLASS's own wait. Built with
// -DTORCH_SELFATTN_DEBUG_HANGS (setup.py passes TORCH_SELFATTN_NVCC_FLAGS on
// to nvcc; benchmarks/gpu_check.sh does so for its hopper step), a wait that
// has not seen its phase end after TORCH_SELFATTN_HANG_LIMIT_MS (default
// 4000) of the GPU's global timer prints which barrier it is, the stage, the
// phase parity, the block and the thread, then traps: a lost arrival or a
// copy that never lands becomes a kernel error that names itself instead of
// a device that never comes back. The limit is in time rather than in tries
// because how long one try suspends is up to the hardware.
#pragma once

#include <cutlass/arch/barrier.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include <cstdint>
#if defined(TORCH_SELFATTN_DEBUG_HANGS)
#include <cstdio>
#endif

namespace selfattn::cuda::hopper {

#if defined(TORCH_SELFATTN_DEBUG_HANGS)
#ifndef TORCH_SELFATTN_HANG_LIMIT_MS
#define TORCH_SELFATTN_HANG_LIMIT_MS 4000
#endif

__device__ __forceinline__ uint64_t global_timer_ns() {
  uint64_t ns;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(ns));
  return ns;
}

// Calls try_once() until it reports the phase done; past the limit, one
// line from the lowest waiting lane of each warp, then the trap.
template <typename TryOnce>
__device__ __forceinline__ void wait_or_report(TryOnce try_once, const char* name, uint32_t stage, uint32_t parity) {
  const uint64_t start = global_timer_ns();
  while (!try_once()) {
    const uint64_t waited = global_timer_ns() - start;
    if (waited > uint64_t{TORCH_SELFATTN_HANG_LIMIT_MS} * 1000000) {
      const unsigned waiting = __activemask();
      if (threadIdx.x % 32 == static_cast<unsigned>(__ffs(static_cast<int>(waiting)) - 1)) {
        printf("torch_selfattn hang: block (%u, %u, %u) thread %u (warp %u, waiting lanes 0x%08x) waited %llu ms on "
               "mbarrier %s[%u] for the phase of parity %u; trapping\n",
               blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.x / 32, waiting,
               static_cast<unsigned long long>(waited / 1000000), name, stage, parity);
      }
      __trap();
    }
  }
}
#endif

// A consumer waits until the stage is full ("k_full", "v_full").
template <typename Pipeline, typename State>
__device__ __forceinline__ void wait_full(Pipeline& pipeline, State state, [[maybe_unused]] const char* name) {
#if defined(TORCH_SELFATTN_DEBUG_HANGS)
  wait_or_report([&] { return pipeline.consumer_try_wait(state) == cutlass::BarrierStatus::WaitDone; }, name,
                 state.index(), state.phase());
#endif
  pipeline.consumer_wait(state);
}

// The producer waits until the stage is empty ("k_empty", "v_empty"), then
// announces the tile's bytes on its full barrier.
template <typename Pipeline, typename State>
__device__ __forceinline__ void acquire_empty(Pipeline& pipeline, State state, [[maybe_unused]] const char* name) {
#if defined(TORCH_SELFATTN_DEBUG_HANGS)
  wait_or_report([&] { return pipeline.producer_try_acquire(state) == cutlass::BarrierStatus::WaitDone; }, name,
                 state.index(), state.phase());
#endif
  pipeline.producer_acquire(state);
}

// A consumer waits for Q (one phase: it is loaded once).
__device__ __forceinline__ void wait_q(cutlass::arch::ClusterTransactionBarrier& q_full) {
#if defined(TORCH_SELFATTN_DEBUG_HANGS)
  wait_or_report([&] { return q_full.try_wait(0); }, "q_full", 0, 0);
#endif
  q_full.wait(0);
}

}  // namespace selfattn::cuda::hopper
