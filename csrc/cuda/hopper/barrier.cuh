// A shared-memory barrier (mbarrier) that completes in phases: a phase ends
// when the expected number of threads has arrived and every byte announced
// with arrive_expect_tx has landed. The copy engine (TMA) counts its bytes
// onto it, so one barrier says "this tile is in shared memory" without any
// thread polling the copy. Waiters name the phase by its parity, 0 for the
// first, 1 for the second, 0 again for the third: a ring of stages uses each
// stage's barrier once per trip round the ring.
//
// Device code for sm_90 only (see arch.cuh).
#pragma once

#include <cstdint>

#include "cuda/tensor_core/warp_ops.cuh"

namespace selfattn::cuda::hopper {

using tc::shared_address;

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

  __device__ __forceinline__ void wait(uint32_t parity) const {
    while (!phase_done(parity)) {
    }
  }
};

// Makes initialised barriers visible to the copy engine before any copy
// names them; a __syncthreads must follow for the other threads.
__device__ __forceinline__ void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

}  // namespace selfattn::cuda::hopper
