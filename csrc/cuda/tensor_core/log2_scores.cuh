// The score rules as the tensor-core kernels apply them: which key tiles a
// block walks, which tiles need per-element rules at all, and each score in
// the log2 domain (the kernels exponentiate with exp2), all from the shared
// rules of sequence_head.cuh and common/score_rules.h.
//
// The kernels are compiled for four sets of rules (Rules). kGeneral serves
// every call. kOptions serves calls without sequences, windows, bottom-right
// alignment, ALiBi or softcap, for which the rules reduce to top-left causal
// masking and every length is the call's; the attention mask and dropout
// are tested at run time. The compiler cannot derive that (it does not know
// the call has no window), and at head dim 128 the inner loops have no
// register to spare for what the general rules would keep, so these
// kernels state the reduced rule themselves, in the places marked "for
// top-left causal masking alone". kPlain and kCausal, the fast paths, serve
// kOptions's calls without mask or dropout and with a positive scale: they
// have no per-score test outside the tiles that cross the diagonal or the
// end of the keys. All are tested against the same float64 reference.
#pragma once

#include "common/dropout_index.h"
#include "common/numeric.h"
#include "cuda/device/sequence_head.cuh"

namespace selfattn::cuda::tc {

enum class Rules { kPlain, kCausal, kOptions, kGeneral };

SELFATTN_HOST_DEVICE constexpr bool is_fast(Rules rules) { return rules == Rules::kPlain || rules == Rules::kCausal; }

// Whether a call needs the kGeneral kernels.
inline bool needs_general_rules(const AttentionParams& p) {
  return p.has_sequences() || p.bottom_right || p.window_left >= 0 || p.window_right >= 0 || has_score_bias(p);
}

// The rules of the kernel that serves a call.
inline Rules rules_for(const AttentionParams& p) {
  if (needs_general_rules(p)) return Rules::kGeneral;
  // The fast paths take row maxima of the raw products, which commute with
  // a positive scale only.
  if (p.mask_kind != MaskKind::None || p.dropout.enabled() || !(p.scale > 0.0)) return Rules::kOptions;
  return p.causal ? Rules::kCausal : Rules::kPlain;
}

// Query head h of sequence s, as a block of the kGeneral variant sees it.
template <bool kGeneral>
__device__ __forceinline__ SequenceHead<float> block_head(const AttentionParams& p, int64_t s, int64_t h) {
  if constexpr (kGeneral) {
    return sequence_head<float>(p, sequence(p, s), s, h);
  } else {
    SequenceHead<float> head = sequence_head<float>(p, Sequence{s, 0, 0, p.q_len, p.kv_len}, s, h);
    head.shift = 0;
    head.alibi = 0.f;
    return head;
  }
}

// Score (i, j)'s dropout index (common/dropout_index.h). Without sequences
// it is batch_dropout_index, the form in which the kernels keep no 64-bit
// base in registers across their loops.
template <bool kGeneral>
__device__ __forceinline__ uint64_t dropout_index(const AttentionParams& p, const SequenceHead<float>& at, int64_t i,
                                                  int64_t j) {
  if constexpr (kGeneral) {
    return selfattn::dropout_index(p, at.s, at.h, at.seq.q_len, at.seq.kv_len, i, j);
  } else {
    return batch_dropout_index(p, at.s, at.h, i, j);
  }
}

// The union of the bands of items [first, first + count), rows or keys,
// `band` giving each one's: bands only move right (or down) from one item
// to the next, so the first and the last item bound it.
template <typename Band>
__device__ __forceinline__ KeyRange union_of_bands(int64_t first, int64_t count, const Band& band) {
  return KeyRange{band(first).first, band(first + count - 1).end};
}

// The keys that some query row of [row0, row0 + rows) sees, and the query
// rows that see some key of [col0, col0 + cols): the tiles a block walks.
template <bool kGeneral>
__device__ __forceinline__ KeyRange keys_seen_by_rows(const AttentionParams& p, const SequenceHead<float>& at,
                                                      int64_t row0, int64_t rows) {
  if constexpr (kGeneral) {
    return union_of_bands(row0, rows, [&](int64_t i) { return visible_keys(p, i, at.shift, at.seq.kv_len); });
  } else {
    // visible_keys for top-left causal masking alone.
    return KeyRange{0, p.causal ? smaller(p.kv_len, row0 + rows) : p.kv_len};
  }
}

template <bool kGeneral>
__device__ __forceinline__ KeyRange rows_seeing_keys(const AttentionParams& p, const SequenceHead<float>& at,
                                                     int64_t col0, int64_t cols) {
  if constexpr (kGeneral) {
    return union_of_bands(col0, cols, [&](int64_t j) { return rows_seeing(p, j, at.shift, at.seq.q_len); });
  } else {
    // rows_seeing for top-left causal masking alone.
    return KeyRange{p.causal ? smaller(col0, p.q_len) : 0, p.q_len};
  }
}

// Whether some score of query rows [row0, row0 + rows) against keys
// [col0, col0 + cols) may be hidden, or takes an attention mask: tiles that
// need neither skip the per-element rules. The band of visible keys only
// moves right from one row to the next, so the first row bounds its right
// end and the last row its left end.
template <bool kGeneral>
__device__ __forceinline__ bool tile_needs_rules(const AttentionParams& p, const SequenceHead<float>& at,
                                                 int64_t row0, int rows, int64_t col0, int cols) {
  if constexpr (kGeneral) {
    const int64_t kv_len = at.seq.kv_len;
    return p.mask_kind != MaskKind::None || visible_keys(p, row0 + rows - 1, at.shift, kv_len).first > col0 ||
           visible_keys(p, row0, at.shift, kv_len).end < col0 + cols;
  } else {
    // The same test for top-left causal masking alone.
    return p.mask_kind != MaskKind::None || col0 + cols > p.kv_len || (p.causal && col0 + cols - 1 > row0);
  }
}

// Which columns of a score tile, whose keys start at col0, query row i
// sees. The kGeneral kernels work the row's band out once (visible_keys)
// and compare each column with it; the plain ones test each element, which
// costs them fewer registers than keeping the band.
template <bool kGeneral>
struct TileRow {
  int first, end;  // kGeneral: the columns [first, end) of the tile that the row sees

  __device__ __forceinline__ bool sees(const AttentionParams& p, int64_t i, int64_t col0, int c) const {
    if constexpr (kGeneral) {
      return c >= first && c < end;
    } else {
      // key_hidden for top-left causal masking alone.
      const int64_t j = col0 + c;
      return i < p.q_len && j < p.kv_len && !(p.causal && j > i);
    }
  }
};

template <bool kGeneral>
__device__ __forceinline__ TileRow<kGeneral> tile_row(const AttentionParams& p, const SequenceHead<float>& at,
                                                      int64_t i, int64_t col0, int cols) {
  TileRow<kGeneral> row{0, 0};
  if constexpr (kGeneral) {
    if (i < at.seq.q_len) {  // rows past the sequence see nothing
      const KeyRange seen = visible_keys(p, i, at.shift, at.seq.kv_len);
      row.first = static_cast<int>(seen.first - col0 < 0 ? 0 : smaller(seen.first - col0, cols));
      row.end = static_cast<int>(seen.end - col0 < row.first ? row.first : smaller(seen.end - col0, cols));
    }
  }
  return row;
}

// The two rows that a thread holds of an m-tile, i and i + 8.
template <bool kGeneral>
struct TileRowPair {
  TileRow<kGeneral> half[2];
};

template <bool kGeneral>
__device__ __forceinline__ TileRowPair<kGeneral> tile_row_pair(const AttentionParams& p,
                                                               const SequenceHead<float>& at, int64_t i,
                                                               int64_t col0, int cols) {
  return {{tile_row<kGeneral>(p, at, i, col0, cols), tile_row<kGeneral>(p, at, i + 8, col0, cols)}};
}

// Whether some score of a tile of the fast paths, of query rows from row0
// against keys [col0, col0 + cols), lies past the keys' end or (kCausal)
// past the diagonal.
template <bool kCausal>
__device__ __forceinline__ bool fast_tile_crosses_edge(int64_t row0, int64_t col0, int cols, int64_t kv_len) {
  return col0 + cols > kv_len || (kCausal && col0 + cols - 1 > row0);
}

// One 16-row m-tile of scores of the fast paths, raw products in mma
// accumulators (rows i and i + 8 for this thread, columns from col0), with
// the keys that the rows do not see set to −inf: those past the keys' end,
// and under causal masking those past the diagonal. Rows past the queries'
// end keep their scores; nothing of them is written.
template <bool kCausal, int kNBlocks>
__device__ __forceinline__ void mask_edge_scores(float (&s)[kNBlocks][4], int64_t i, int64_t col0, int64_t kv_len) {
  constexpr int kCols = kNBlocks * 8;
  const int t = static_cast<int>(threadIdx.x) % 4;
  // In 32 bits from here: the last column that the keys reach, and row i's
  // diagonal, each clamped to where it still decides something (−1 or
  // below: no column; kCols − 1 or above: every column).
  const int keys_last = static_cast<int>(smaller(larger(kv_len - 1 - col0, -1), kCols));
  const int diagonal = static_cast<int>(smaller(larger(i - col0, -9), kCols));
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int last = kCausal ? min(keys_last, diagonal + half * 8) : keys_last;
#pragma unroll
    for (int nb = 0; nb < kNBlocks; ++nb) {
#pragma unroll
      for (int e = 2 * half; e < 2 * half + 2; ++e) {
        if (nb * 8 + 2 * t + (e & 1) > last) s[nb][e] = -INFINITY;
      }
    }
  }
}

// Score (i, j) in the log2 domain from its raw product, or −inf where the
// key is not `visible`. `cap_slope`, when given, receives the softcap's
// derivative (see visible_score).
template <bool kGeneral>
__device__ __forceinline__ float log2_score(const AttentionParams& p, const SequenceHead<float>& at, int64_t i,
                                            int64_t j, float product, float scale_log2, bool visible,
                                            float* cap_slope = nullptr) {
  if (cap_slope != nullptr) *cap_slope = 1.f;
  if (!visible) return -INFINITY;
  if constexpr (kGeneral) {
    if (has_score_bias(p) || p.mask_kind != MaskKind::None) {
      return visible_score(p, at, i, j, product * static_cast<float>(p.scale), cap_slope) * kLog2e;
    }
    return product * scale_log2;
  } else {
    float x = product * scale_log2;
    if (p.mask_kind != MaskKind::None) x += mask_term<float>(p, at.seq.batch, at.h, i, j) * kLog2e;
    return x;
  }
}

}  // namespace selfattn::cuda::tc
