// A shared-memory barrier (mbarrier) that completes in phases: a phase ends
// when the expected number of threads has arrived and every byte announced
// with arrive_expect_tx has landed. The copy engine (TMA) counts its bytes
// onto it, so one barrier says "this tile is in shared memory" without any
// thread polling the copy. Waiters name the phase by its parity, 0 for the
// first, 1 for the second, 0 again for the third: a ring of stages uses each
// stage's barrier once per trip round the ring.
//
// Device code for sm_90 only (see arch.cuh).
//
// Hang debugging: built with -DTORCH_SELFATTN_DEBUG_HANGS (setup.py passes
// TORCH_SELFATTN_NVCC_FLAGS on to nvcc), a wait that has not seen its phase
// end after TORCH_SELFATTN_HANG_LIMIT_MS (default 4000) of the GPU's global
// timer prints the barrier, the phase parity, the block and the thread, then
// traps: a lost arrival or a copy that never lands becomes a kernel error
// that names itself instead of a device that never comes back. The limit is
// in time rather than in tries because how long one try_wait suspends is up
// to the hardware.
#pragma once

#include <cstdint>
#if defined(TORCH_SELFATTN_DEBUG_HANGS)
#include <cstdio>
#endif

#include "cuda/tensor_core/warp_ops.cuh"

namespace selfattn::cuda::hopper {

using tc::shared_address;

#if defined(TORCH_SELFATTN_DEBUG_HANGS)
#ifndef TORCH_SELFATTN_HANG_LIMIT_MS
#define TORCH_SELFATTN_HANG_LIMIT_MS 4000
#endif
constexpr uint64_t kHangLimitNs = uint64_t{TORCH_SELFATTN_HANG_LIMIT_MS} * 1000000;

__device__ __forceinline__ uint64_t global_timer_ns() {
  uint64_t ns;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(ns));
  return ns;
}

// One line per warp (from its lowest waiting lane), then the trap.
__device__ __forceinline__ void report_hang_and_trap(uint32_t barrier_address, uint32_t parity, const char* name,
                                                     int index, uint64_t tries, uint64_t waited_ns) {
  const unsigned waiting = __activemask();
  if (threadIdx.x % 32 == static_cast<unsigned>(__ffs(static_cast<int>(waiting)) - 1)) {
    printf(
        "torch_selfattn hang: block (%u, %u, %u) thread %u (warp %u, waiting lanes 0x%08x) waited %llu ms "
        "(%llu tries) on mbarrier %s[%d] (shared 0x%x) for the phase of parity %u; trapping\n",
        blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.x / 32, waiting,
        static_cast<unsigned long long>(waited_ns / 1000000), static_cast<unsigned long long>(tries), name, index,
        barrier_address, parity);
  }
  __trap();
}
#endif

struct SharedBarrier {
  uint64_t state;

  __device__ __forceinline__ uint32_t address() const { return shared_address(&state); }

  // One thread initialises; `arrivals` threads must arrive to end a phase.
  __device__ __forceinline__ void init(uint32_t arrivals) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(address()), "r"(arrivals) : "memory");
  }

  // Arrives and announces `bytes` more to come from the copy engine before
  // the phase can end.
  __device__ __forceinline__ void arrive_expect_bytes(uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(address()), "r"(bytes)
                 : "memory");
  }

  __device__ __forceinline__ void arrive() {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(address()) : "memory");
  }

  // Whether the phase of this parity has ended (without blocking for long:
  // try_wait suspends the thread for a time the hardware picks).
  __device__ __forceinline__ bool phase_done(uint32_t parity) const {
    uint32_t done;
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n"
        "}\n"
        : "=r"(done)
        : "r"(address()), "r"(parity)
        : "memory");
    return done != 0;
  }

  // Waits for the phase of this parity to end. `name` and `index` (the
  // stage, for a ring) say which barrier this is in a debug build's report.
  __device__ __forceinline__ void wait(uint32_t parity, [[maybe_unused]] const char* name,
                                       [[maybe_unused]] int index = 0) const {
#if defined(TORCH_SELFATTN_DEBUG_HANGS)
    const uint64_t start = global_timer_ns();
    for (uint64_t tries = 1; !phase_done(parity); ++tries) {
      const uint64_t waited_ns = global_timer_ns() - start;
      if (waited_ns > kHangLimitNs) report_hang_and_trap(address(), parity, name, index, tries, waited_ns);
    }
#else
    while (!phase_done(parity)) {
    }
#endif
  }
};

// Makes initialised barriers visible to the copy engine before any copy
// names them; a __syncthreads must follow for the other threads.
__device__ __forceinline__ void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

}  // namespace selfattn::cuda::hopper
