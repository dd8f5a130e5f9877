// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
// SC'11): a counter-based generator. Each (key, counter) pair maps to four
// independent 32-bit words with no state to carry, which is what lets the
// backward regenerate the forward's dropout mask tile by tile, in any order
// and on any number of threads.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace selfattn {

struct Philox4x32 {
  uint32_t word[4];
};

SELFATTN_HOST_DEVICE void philox_mul_hi_lo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(product >> 32);
  lo = static_cast<uint32_t>(product);
}

SELFATTN_HOST_DEVICE Philox4x32 philox4x32_10(uint64_t key, uint64_t counter_lo, uint64_t counter_hi) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  uint32_t c0 = static_cast<uint32_t>(counter_lo), c1 = static_cast<uint32_t>(counter_lo >> 32);
  uint32_t c2 = static_cast<uint32_t>(counter_hi), c3 = static_cast<uint32_t>(counter_hi >> 32);
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mul_hi_lo(kMul0, c0, hi0, lo0);
    philox_mul_hi_lo(kMul1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return Philox4x32{{c0, c1, c2, c3}};
}

// Keeps an element with probability 1 - p: the drop threshold is p scaled to
// the 32-bit range, computed once per call.
SELFATTN_HOST_DEVICE uint64_t dropout_threshold(double p) {
  return p >= 1.0 ? (uint64_t(1) << 32) : static_cast<uint64_t>(p * 4294967296.0);
}

// The random words for elements 4·block .. 4·block + 3 of the
// (batch, head, L, S) score space: element `index` uses word index % 4 of
// block index / 4.
SELFATTN_HOST_DEVICE Philox4x32 dropout_words(uint64_t seed, uint64_t offset, uint64_t block) {
  return philox4x32_10(seed, block, offset);
}

}  // namespace selfattn
