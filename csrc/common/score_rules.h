// The rules that turn a scaled product q·k into the score the softmax sees,
// beyond the attention mask: which keys a query may see (causal and sliding
// windows, top-left or bottom-right aligned), the ALiBi bias and tanh
// softcapping. One definition for every kernel, CPU and CUDA alike, so that
// they cannot disagree on where a band starts or how a bias is signed.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/attention_params.h"

namespace selfattn {

// How far the diagonal d = 0 is shifted right: S − L for bottom-right
// alignment, 0 for top-left. Lengths are those of the sequence.
SELFATTN_HOST_DEVICE int64_t diagonal_shift(const AttentionParams& p, int64_t q_len, int64_t kv_len) {
  return p.bottom_right ? kv_len - q_len : 0;
}

// The right bound on −d: 0 under causal masking, whatever the window says.
SELFATTN_HOST_DEVICE int64_t right_reach(const AttentionParams& p) {
  return p.causal ? 0 : p.window_right;
}

// The key columns query row i may see are [first, end), clipped to [0, kv_len).
struct KeyRange {
  int64_t first, end;
};

// [first, end) ∩ [0, n), empty (first = end) when they do not meet. A band
// may lie wholly past either end: rows far below a top-left window's keys
// see none of them.
SELFATTN_HOST_DEVICE KeyRange clipped(int64_t first, int64_t end, int64_t n) {
  first = first < 0 ? 0 : (first > n ? n : first);
  end = end > n ? n : end;
  return KeyRange{first, end < first ? first : end};
}

SELFATTN_HOST_DEVICE KeyRange visible_keys(const AttentionParams& p, int64_t i, int64_t shift, int64_t kv_len) {
  const int64_t diagonal = i + shift;
  int64_t first = p.window_left >= 0 ? diagonal - p.window_left : 0;
  int64_t end = right_reach(p) >= 0 ? diagonal + right_reach(p) + 1 : kv_len;
  return clipped(first, end, kv_len);
}

SELFATTN_HOST_DEVICE bool key_hidden(const AttentionParams& p, int64_t i, int64_t j, int64_t shift,
                                     int64_t kv_len) {
  const KeyRange range = visible_keys(p, i, shift, kv_len);
  return j < range.first || j >= range.end;
}

// The query rows that see key column j at all: [first, end), clipped to [0, q_len).
SELFATTN_HOST_DEVICE KeyRange rows_seeing(const AttentionParams& p, int64_t j, int64_t shift, int64_t q_len) {
  int64_t first = right_reach(p) >= 0 ? j - shift - right_reach(p) : 0;
  int64_t end = p.window_left >= 0 ? j - shift + p.window_left + 1 : q_len;
  return clipped(first, end, q_len);
}

SELFATTN_HOST_DEVICE bool has_score_bias(const AttentionParams& p) {
  return p.softcap > 0.0 || p.alibi_slopes != nullptr;
}

template <typename acc_t>
SELFATTN_HOST_DEVICE acc_t alibi_slope(const AttentionParams& p, int64_t b, int64_t h) {
  return static_cast<const acc_t*>(p.alibi_slopes)[b * p.alibi_batch_stride + h];
}

// softcap and ALiBi applied to a scaled score s of query i, key j. When
// `slope_out` is given it receives ds_out/ds_in, the factor the backward
// multiplies the score gradient by (1 − tanh², or 1 without softcap).
template <typename acc_t>
SELFATTN_HOST_DEVICE acc_t biased_score(const AttentionParams& p, acc_t s, acc_t alibi, int64_t i, int64_t j,
                                        int64_t shift, acc_t* slope_out) {
  if (p.softcap > 0.0) {
    const acc_t cap = static_cast<acc_t>(p.softcap);
    using std::tanh;
    const acc_t t = tanh(s / cap);
    s = cap * t;
    if (slope_out != nullptr) *slope_out = acc_t(1) - t * t;
  } else if (slope_out != nullptr) {
    *slope_out = acc_t(1);
  }
  if (p.alibi_slopes != nullptr) {
    const int64_t d = i + shift - j;
    s -= alibi * static_cast<acc_t>(d < 0 ? -d : d);
  }
  return s;
}

}  // namespace selfattn
