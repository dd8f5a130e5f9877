// FlashAttention-2 forward with mma.sync. A block owns kBlockM query rows of
// one head of one sequence; each of its warps owns kBlockM / kWarps of those
// rows and keeps their output accumulators, row maxima and row sums in
// registers while the key/value tiles stream through shared memory:
//
//   load Q, K[last], V[last]
//   for each key tile n that the rows see,  (causality and windows skip the others)
//       last first:                         (the first ones met are those that need masking)
//     start loading K[n−1], V[n−1] into the other stage; wait for stage n
//     S = Q·K[n]ᵀ                            mma.sync, Q and K from shared memory
//     the rules (masks) on edge tiles alone; online softmax  exp2, in registers
//     O += P·V[n]                            P straight from the S accumulators
//   O /= rowsum; write O and the logsumexp
// K and V are double-buffered, so a tile's loads have the whole of the
// previous tile's work to arrive in. The fast paths (Rules::kPlain and
// kCausal) run the tiles that cross the diagonal or the end of the keys
// through one loop body and the interior tiles, which every row sees whole,
// through another without any masking code; the other rules test each tile.
#pragma once

#include "cuda/tensor_core/log2_scores.cuh"
#include "cuda/tensor_core/shared_tile.cuh"

#include <type_traits>

namespace selfattn::cuda::tc {

template <int kBlockM_, int kBlockN_, int kWarps_>
struct ForwardShape {
  static constexpr int kBlockM = kBlockM_, kBlockN = kBlockN_, kWarps = kWarps_;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMTiles = kBlockM / kWarps / 16;  // 16-row MMA tiles per warp
  static_assert(kMTiles * 16 * kWarps == kBlockM, "each warp owns whole 16-row tiles");
};

// The running softmax state of the rows a thread holds: for m-tile mt, rows
// g (half 0) and g + 8 (half 1). The fast paths add a tile's probabilities
// up with one more mma, against a matrix of ones, so that sum[mt] is an
// accumulator whose elements 2·half and 2·half + 1 both hold row half's
// whole sum: no add per score, and no fp32 probability kept alive for one.
// (It sums the probabilities that P·V takes, rounded to 16 bits, so the
// normalisation matches them.) The other paths add fp32 probabilities into
// sum[mt][2·half], per thread, before dropout drops some; the four threads
// of a row add theirs up at the end.
template <int kMTiles>
struct RowState {
  float max[kMTiles][2];
  float sum[kMTiles][4];
};

template <typename T, int kDim, typename Shape, Rules kRules>
__global__ void __launch_bounds__(Shape::kThreads) forward_kernel(const AttentionParams p, const DropoutSeed seed) {
  constexpr bool kGeneral = kRules == Rules::kGeneral;
  constexpr bool kFast = is_fast(kRules);
  constexpr int kBlockM = Shape::kBlockM, kBlockN = Shape::kBlockN, kThreads = Shape::kThreads;
  constexpr int kMTiles = Shape::kMTiles, kNBlocks = kBlockN / 8, kDBlocks = kDim / 8;
  using QTile = SharedTile<T, kBlockM, kDim>;
  using KVTile = SharedTile<T, kBlockN, kDim>;

  extern __shared__ __align__(128) unsigned char smem[];
  const QTile q_tile{reinterpret_cast<T*>(smem)};
  // Stage st of K, then of V: the stages lie back to back.
  T* const k_stages = reinterpret_cast<T*>(smem + QTile::kBytes);
  T* const v_stages = reinterpret_cast<T*>(smem + QTile::kBytes + 2 * KVTile::kBytes);
  auto k_tile_of = [&](int stage) { return KVTile{k_stages + stage * (KVTile::kBytes / int(sizeof(T)))}; };
  auto v_tile_of = [&](int stage) { return KVTile{v_stages + stage * (KVTile::kBytes / int(sizeof(T)))}; };

  // Blocks take (sequence, head, row tile) in that order, row tiles up to
  // the longest sequence's; heavy (late) row tiles first under causal
  // masking, so the tail of the grid is short blocks.
  const int64_t m_blocks = ceil_div(p.max_seqlen_q, kBlockM);
  const int64_t head = blockIdx.x / m_blocks;  // s·Hq + h
  const int64_t m_index = blockIdx.x % m_blocks;
  const int64_t m_block = p.causal ? m_blocks - 1 - m_index : m_index;
  const int64_t sequence_index = head / p.q_heads;
  const SequenceHead<float> at = block_head<kGeneral>(p, sequence_index, head % p.q_heads);
  const int64_t kv_head = at.h / p.group_size();
  const int64_t q_len = at.seq.q_len, kv_len = at.seq.kv_len;

  // Before any block leaves: block 0 records the seed.
  const Dropout dropout = kFast ? Dropout{} : resolve_dropout(p, seed, blockIdx.x == 0 && threadIdx.x == 0);
  const int64_t row0 = m_block * kBlockM;
  if (row0 >= q_len) return;  // past the sequence's rows: no block of this head's writes them
  const int q_rows = static_cast<int>(smaller(kBlockM, q_len - row0));
  // The key tiles that some row of the block sees; rows past the sequence's
  // end count too (they cost a tile at most, and the plain kernels fewer
  // registers than with the real count).
  const KeyRange band = keys_seen_by_rows<kGeneral>(p, at, row0, kBlockM);
  const int n_first = static_cast<int>(band.first / kBlockN);
  const int n_end = band.end > band.first ? static_cast<int>(ceil_div(band.end, kBlockN)) : n_first;

  const T* q = static_cast<const T*>(p.q.data) + at.seq.batch * p.q.stride.batch + at.h * p.q.stride.head +
               at.q_row(row0) * p.q.stride.row;
  const T* k = static_cast<const T*>(p.k.data) + at.seq.batch * p.k.stride.batch + kv_head * p.k.stride.head +
               at.k_row(0) * p.k.stride.row;
  const T* v = static_cast<const T*>(p.v.data) + at.seq.batch * p.v.stride.batch + kv_head * p.v.stride.head +
               at.k_row(0) * p.v.stride.row;
  const int E = static_cast<int>(p.head_dim), Ev = static_cast<int>(p.value_dim);
  const TileCopy<T, kBlockN, kDim, kThreads> copy_k{p.k.stride.row, E}, copy_v{p.v.stride.row, Ev};

  TileCopy<T, kBlockM, kDim, kThreads>{p.q.stride.row, E}.first_rows(q_tile, q, q_rows);
  // The last key tile first, the only one that may be partial.
  if (n_end > n_first) {
    const int64_t col0 = static_cast<int64_t>(n_end - 1) * kBlockN;
    const int cols = static_cast<int>(smaller(kBlockN, kv_len - col0));
    copy_k.first_rows(k_tile_of(0), k + col0 * p.k.stride.row, cols);
    copy_v.first_rows(v_tile_of(0), v + col0 * p.v.stride.row, cols);
  }
  commit_async_copies();

  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;
  const int warp_row0 = warp * kMTiles * 16;

  float acc[kMTiles][kDBlocks][4] = {};
  RowState<kMTiles> rows;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
    rows.max[mt][0] = rows.max[mt][1] = -INFINITY;
    rows.sum[mt][0] = rows.sum[mt][1] = rows.sum[mt][2] = rows.sum[mt][3] = 0.f;
  }
  const float scale_log2 = static_cast<float>(p.scale) * kLog2e;
  // The fast paths keep raw products and fold the scale into the exp's
  // argument (one FFMA); the others hold scores in the log2 domain.
  const float score_scale = kFast ? scale_log2 : 1.f;

  // Key tile n. `edge` (std::true_type or false_type): whether the tile may
  // hold scores that some row does not see.
  auto attend_tile = [&](int n, auto edge) {
    const int stage = (n_end - 1 - n) & 1;
    if (n > n_first) {  // tiles before the last are whole
      const int64_t next_col0 = static_cast<int64_t>(n - 1) * kBlockN;
      copy_k.whole(k_tile_of(stage ^ 1), k + next_col0 * p.k.stride.row);
      copy_v.whole(v_tile_of(stage ^ 1), v + next_col0 * p.v.stride.row);
      commit_async_copies();
      wait_async_copies<1>();
    } else {
      wait_async_copies<0>();
    }
    __syncthreads();
    const KVTile k_tile = k_tile_of(stage), v_tile = v_tile_of(stage);

    // S = Q·Kᵀ for this warp's rows. On the edge tiles of the fast paths the
    // accumulators start at −inf where a row does not see the key (and the
    // product leaves them there), at 0 elsewhere: the mask costs nothing
    // after the product, where the softmax needs the registers.
    const int64_t col0 = static_cast<int64_t>(n) * kBlockN;
    float s[kMTiles][kNBlocks][4] = {};
    if constexpr (kFast && decltype(edge)::value) {
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        mask_edge_scores<kRules == Rules::kCausal>(s[mt], row0 + warp_row0 + mt * 16 + g, col0, kv_len);
      }
    }
#pragma unroll
    for (int kk = 0; kk < kDim / 16; ++kk) {
      uint32_t a[kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) q_tile.load_a(a[mt], warp_row0 + mt * 16, kk * 16);
#pragma unroll
      for (int nb = 0; nb < kNBlocks; nb += 2) {
        uint32_t b[4];
        k_tile.load_b_pair_of_transpose(b, nb * 8, kk * 16);
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          mma_16x16x16<T>(s[mt][nb], s[mt][nb + 1], a[mt], b);
        }
      }
    }

    if constexpr (!kFast) {
      // Scores into the log2 domain; the rules only where a tile needs them.
      const bool needs_rules = tile_needs_rules<kGeneral>(p, at, row0 + warp_row0, kMTiles * 16, col0, kBlockN);
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        const int64_t first_row = row0 + warp_row0 + mt * 16 + g;
        const TileRowPair<kGeneral> seen = tile_row_pair<kGeneral>(p, at, first_row, col0, kBlockN);
#pragma unroll
        for (int nb = 0; nb < kNBlocks; ++nb) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int64_t i = first_row + (e >> 1) * 8;
            const int c = nb * 8 + 2 * t + (e & 1);
            const bool visible = !needs_rules || seen.half[e >> 1].sees(p, i, col0, c);
            s[mt][nb][e] = log2_score<kGeneral>(p, at, i, col0 + c, s[mt][nb][e], scale_log2, visible);
          }
        }
      }
    }

    // Online softmax: new row maxima, rescale what has been accumulated,
    // S → P = exp2(S·score_scale − shift).
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float tile_max = -INFINITY;
#pragma unroll
        for (int nb = 0; nb < kNBlocks; ++nb) {
          tile_max = fmaxf(tile_max, fmaxf(s[mt][nb][2 * half], s[mt][nb][2 * half + 1]));
        }
        const float new_max = fmaxf(rows.max[mt][half], quad_max(tile_max));
        // A row that has seen only masked scores keeps max −inf; shifting by
        // 0 then gives exp2(−inf) = 0 instead of NaN.
        const float shift = new_max == -INFINITY ? 0.f : new_max * score_scale;
        const float rescale = exp2f(fmaf(rows.max[mt][half], score_scale, -shift));
        rows.max[mt][half] = new_max;
        float tile_sum = 0.f;
#pragma unroll
        for (int nb = 0; nb < kNBlocks; ++nb) {
#pragma unroll
          for (int e = 2 * half; e < 2 * half + 2; ++e) {
            s[mt][nb][e] = exp2f(fmaf(s[mt][nb][e], score_scale, -shift));
            if constexpr (!kFast) tile_sum += s[mt][nb][e];
          }
        }
        rows.sum[mt][2 * half] = rows.sum[mt][2 * half] * rescale + tile_sum;
        if constexpr (kFast) rows.sum[mt][2 * half + 1] *= rescale;
#pragma unroll
        for (int db = 0; db < kDBlocks; ++db) {
          acc[mt][db][2 * half] *= rescale;
          acc[mt][db][2 * half + 1] *= rescale;
        }
      }
    }

    // Dropout drops probabilities after the row sums took them in; the
    // 1 / (1 − p) is applied with the final normalisation.
    if (!kFast && dropout.enabled) {
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
        for (int nb = 0; nb < kNBlocks; ++nb) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int64_t i = row0 + warp_row0 + mt * 16 + g + (e >> 1) * 8;
            const int64_t j = col0 + nb * 8 + 2 * t + (e & 1);
            if (i < q_len && j < kv_len && !dropout.keeps(dropout_index<kGeneral>(p, at, i, j))) s[mt][nb][e] = 0.f;
          }
        }
      }
    }

    // O += P·V, P taken from the S accumulators as A fragments.
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t a[kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) accumulators_as_a<T>(s[mt], kk, a[mt]);
#pragma unroll
      for (int db = 0; db < kDBlocks; db += 2) {
        uint32_t b[4];
        v_tile.load_b_pair(b, kk * 16, db * 8);
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          mma_16x16x16<T>(acc[mt][db], acc[mt][db + 1], a[mt], b);
        }
      }
      if constexpr (kFast) {
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) mma_16x8x16<T>(rows.sum[mt], a[mt], ones_pair<T>(), ones_pair<T>());
      }
    }
    // The next tile loads into the stage this one has just read.
    __syncthreads();
  };

  if constexpr (kFast) {
    // Tiles from n_interior on cross the keys' end or (causal) the
    // diagonal of the block's first row; those before it are whole.
    const int64_t keys_seen_by_all = kRules == Rules::kCausal ? smaller(kv_len, row0 + 1) : kv_len;
    const int n_interior = static_cast<int>(keys_seen_by_all / kBlockN);
    int n = n_end - 1;
    for (; n >= n_interior; --n) attend_tile(n, std::true_type{});
    for (; n >= n_first; --n) attend_tile(n, std::false_type{});
  } else {
    for (int n = n_end - 1; n >= n_first; --n) attend_tile(n, std::true_type{});
  }

  // Normalise and write. A fully masked row (max −inf) is written as 0 with
  // logsumexp −inf, as PyTorch's safe softmax gives.
  T* out = static_cast<T*>(p.out.data) + at.seq.batch * p.out.stride.batch + at.h * p.out.stride.head;
  float* lse = static_cast<float*>(p.logsumexp);
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const float sum = kFast ? rows.sum[mt][2 * half] : quad_sum(rows.sum[mt][2 * half]);
      const bool masked_row = rows.max[mt][half] == -INFINITY;
      const float factor = masked_row ? 0.f : static_cast<float>(dropout.keep_scale) / sum;
      const int64_t i = row0 + warp_row0 + mt * 16 + g + half * 8;
      if (i >= q_len) continue;
      T* out_row = out + at.q_row(i) * p.out.stride.row;
#pragma unroll
      for (int db = 0; db < kDBlocks; ++db) {
        const int col = db * 8 + 2 * t;
        if (col < Ev) {
          *reinterpret_cast<uint32_t*>(out_row + col) =
              pack_pair<T>(acc[mt][db][2 * half] * factor, acc[mt][db][2 * half + 1] * factor);
        }
      }
      if (t == 0) {
        lse[row_index(p, at, i)] =
            masked_row ? -INFINITY : (rows.max[mt][half] * score_scale + log2f(sum)) * kLn2;
      }
    }
  }
}

}  // namespace selfattn::cuda::tc
