// Warp specialisation: a block's warpgroups (four consecutive warps, the
// unit wgmma runs on) take different roles, and setmaxnreg moves registers
// from the warpgroup that only issues copies to those that multiply. The
// block starts with the same register count in every thread (the cap that
// __launch_bounds__(threads, 1) gives); the producer gives most of its
// share back and the consumers take it. Both are executed by every thread of
// the warpgroup, and the counts are multiples of 8 in [24, 256].
//
// Device code for sm_90a only (see arch.cuh).
#pragma once

namespace selfattn::cuda::hopper {

constexpr int kWarpgroupThreads = 128;

template <int kRegisters>
__device__ __forceinline__ void release_registers() {
  static_assert(kRegisters % 8 == 0 && kRegisters >= 24 && kRegisters <= 256, "setmaxnreg's range");
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}

template <int kRegisters>
__device__ __forceinline__ void claim_registers() {
  static_assert(kRegisters % 8 == 0 && kRegisters >= 24 && kRegisters <= 256, "setmaxnreg's range");
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}

}  // namespace selfattn::cuda::hopper
