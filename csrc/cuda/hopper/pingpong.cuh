// Ping-pong between the two consumer warpgroups: each issues its products
// only when the other has issued its own, so that the tensor cores run one
// warpgroup's Q·Kᵀ and P·V while the other does its softmax. Two named
// hardware barriers of 256 threads, one per consumer: a consumer waits on
// its own (bar.sync) before it issues and arrives on the other's (bar.arrive)
// after. Consumer 0 goes first: consumer 1 arrives on consumer 0's barrier
// once at the start, and skips its arrival at its last issue, so every
// phase of both barriers completes and none is left half-full at exit.
#pragma once

#include <cutlass/arch/barrier.h>

#include "cuda/hopper/forward_traits.cuh"

namespace selfattn::cuda::hopper {

// Named-barrier ids, counted from CUTLASS's first free one.
enum class ForwardBarrier : uint32_t {
  kIssue0 = 0,     // consumer 0 may issue
  kIssue1 = 1,     // consumer 1 may issue
  kEpilogue0 = 2,  // consumer 0's output is in shared memory
  kEpilogue1 = 3,
};

struct PingPong {
  int consumer;  // 0 or 1

  static constexpr uint32_t kThreads = kConsumers * kWarpgroupThreads;

  __device__ __forceinline__ static uint32_t issue_barrier(int c) {
    return static_cast<uint32_t>(c == 0 ? ForwardBarrier::kIssue0 : ForwardBarrier::kIssue1);
  }

  __device__ __forceinline__ void start() const {
    if (consumer == 1) cutlass::arch::NamedBarrier::arrive(kThreads, issue_barrier(0));
  }

  __device__ __forceinline__ void wait_turn() const { cutlass::arch::NamedBarrier::sync(kThreads, issue_barrier(consumer)); }

  // last: this is the consumer's final issue.
  __device__ __forceinline__ void pass_turn(bool last) const {
    if (consumer == 0 || !last) cutlass::arch::NamedBarrier::arrive(kThreads, issue_barrier(1 - consumer));
  }
};

}  // namespace selfattn::cuda::hopper
