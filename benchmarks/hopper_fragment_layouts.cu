// Host-side check of what the Hopper forward assumes about CuTe's register
// layouts (csrc/cuda/hopper/forward_softmax.cuh, forward_consumer.cuh), for
// every compiled head dim; benchmarks/sass_gate_hopper.py compiles and runs
// it (no GPU: CuTe's layouts are host-computable).
//
// 1. The accumulator of a 64×N wgmma: register r of thread t holds row
//    16·(t/32) + (t%32)/4 + 8·((r/2)%2) and column 8·(r/4) + 2·(t%4) + r%2.
//    The masks, the row maxima and sums, and the logsumexp's rows rely on it.
// 2. P from registers: value v of k-step kk of P·V's register-A operand is
//    the element that S's register 8·kk + v holds, so S converts to P
//    register for register, with no shuffle.
// Prints one line per head dim; exits 1 on any mismatch.
#include "cuda/hopper/cutlass_config.h"
// (first: it configures CUTLASS)
#include <cstdio>

#include "cuda/hopper/forward_traits.cuh"

namespace {

using namespace selfattn::cuda::hopper;

template <int kDim>
int mismatches() {
  using Traits = ForwardTraits<cutlass::bfloat16_t, kDim>;
  constexpr int kRows = Traits::kConsumerRows, kBlockN = Traits::kBlockN;
  const auto scores = typename Traits::MmaQK{}.get_layoutC_TV();  // (thread, value) -> row + kRows·column
  const auto p_operand = typename Traits::MmaPV{}.get_layoutA_TV();  // (thread, value) -> row + kRows·k, one k-step
  int bad = 0;
  for (int t = 0; t < kWarpgroupThreads; ++t) {
    for (int r = 0; r < kRows * kBlockN / kWarpgroupThreads; ++r) {
      const int s = scores(t, r), row = s % kRows, col = s / kRows;
      const int want_row = 16 * (t / 32) + (t % 32) / 4 + 8 * ((r / 2) % 2);
      const int want_col = 8 * (r / 4) + 2 * (t % 4) + r % 2;
      const int p = p_operand(t, r % 8), p_row = p % kRows, p_col = p / kRows + 16 * (r / 8);
      if (row != want_row || col != want_col || p_row != row || p_col != col) {
        if (bad++ < 4) {
          std::printf("  d=%d thread %d register %d: S (%d, %d), assumed (%d, %d), P (%d, %d)\n", kDim, t, r, row, col,
                      want_row, want_col, p_row, p_col);
        }
      }
    }
  }
  std::printf("head dim %d (%d keys a tile): %d mismatches between CuTe's layouts and the kernel's assumptions\n",
              kDim, kBlockN, bad);
  return bad;
}

}  // namespace

int main() { return mismatches<64>() + mismatches<128>() + mismatches<256>() == 0 ? 0 : 1; }
