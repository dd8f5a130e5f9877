// Issuing one warpgroup product with CuTe's GMMA atoms, without waiting for
// it. wgmma runs asynchronously: the caller commits it as a group here and
// waits later with warpgroup_wait<n>() (n = groups allowed to remain in
// flight), which is what lets a consumer issue Q·K[n]ᵀ and P·V[n+1] back to
// back and start the softmax as soon as the first is done.
//
// Until that wait the accumulator, and a register A operand, belong to the
// tensor cores: the fences below pin them for the compiler, which would
// otherwise move reads or writes across the asynchronous product (ptxas
// then serialises the wgmmas and says so).
#pragma once

#include <cute/tensor.hpp>

#include <type_traits>

namespace selfattn::cuda::hopper {

// C (+)= A·B over every k-step of A and B; zero_init: C = A·B (C's previous
// contents are ignored, so S needs no clearing).
template <bool kZeroInit, typename Mma, typename A, typename B, typename C>
__device__ __forceinline__ void issue_gemm(Mma& mma, const A& a, const B& b, C& c) {
  // A is either shared-memory descriptors or 16-bit values in registers.
  constexpr bool kRegisterA = !std::is_same_v<typename A::iterator, cute::GMMA::DescriptorIterator>;
  if constexpr (kRegisterA) cute::warpgroup_fence_operand(const_cast<A&>(a));
  cute::warpgroup_fence_operand(c);
  cute::warpgroup_arrive();
  mma.accumulate_ = kZeroInit ? cute::GMMA::ScaleOut::Zero : cute::GMMA::ScaleOut::One;
#pragma unroll
  for (int k = 0; k < cute::size<2>(a); ++k) {
    cute::gemm(mma, a(cute::_, cute::_, k), b(cute::_, cute::_, k), c);
    mma.accumulate_ = cute::GMMA::ScaleOut::One;
  }
  cute::warpgroup_commit_batch();
  if constexpr (kRegisterA) cute::warpgroup_fence_operand(const_cast<A&>(a));
}

}  // namespace selfattn::cuda::hopper
