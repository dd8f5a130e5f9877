// Small numeric helpers that the CPU and the CUDA kernels share, one
// definition each.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace selfattn {

// log2(e) and ln(2): the kernels that exponentiate with exp2 keep scores in
// the log2 domain and turn the logsumexp back into the natural log.
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

SELFATTN_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename acc_t>
SELFATTN_HOST_DEVICE acc_t minus_infinity() {
  return -static_cast<acc_t>(INFINITY);
}

// max that lets a NaN through, so that a NaN score poisons its row as it
// does in PyTorch instead of being skipped.
template <typename acc_t>
SELFATTN_HOST_DEVICE acc_t nan_propagating_max(acc_t a, acc_t b) {
  return (b > a || b != b) ? b : a;
}

}  // namespace selfattn
