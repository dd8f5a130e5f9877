// FlashAttention-2 forward with mma.sync. A block owns kBlockM query rows of
// one head of one sequence; each of its warps owns kBlockM / kWarps of those
// rows and keeps their output accumulators, row maxima and row sums in
// registers while the key/value tiles stream through shared memory:
//
//   load Q, K[last], V[last]
//   for each key tile n that the rows see,  (causality and windows skip the others)
//       last first:                         (the first one met is the one that needs masking)
//     start loading K[n−1], V[n−1] into the other stage; wait for stage n
//     S = Q·K[n]ᵀ                            mma.sync, Q and K from shared memory
//     S → log2 domain, masks, online softmax  exp2, in registers
//     O += P·V[n]                            P straight from the S accumulators
//   O /= rowsum; write O and the logsumexp
// K and V are double-buffered, so a tile's loads have the whole of the
// previous tile's work to arrive in.
#pragma once

#include "cuda/tensor_core/log2_scores.cuh"
#include "cuda/tensor_core/shared_tile.cuh"

namespace selfattn::cuda::tc {

template <int kBlockM_, int kBlockN_, int kWarps_>
struct ForwardShape {
  static constexpr int kBlockM = kBlockM_, kBlockN = kBlockN_, kWarps = kWarps_;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMTiles = kBlockM / kWarps / 16;  // 16-row MMA tiles per warp
  static_assert(kMTiles * 16 * kWarps == kBlockM, "each warp owns whole 16-row tiles");
};

// The running softmax state of the rows a thread holds: for m-tile mt, rows
// g (half 0) and g + 8 (half 1). Sums are per thread until the end; the four
// threads of a row add them up once.
template <int kMTiles>
struct RowState {
  float max[kMTiles][2];
  float sum[kMTiles][2];
};

template <typename T, int kDim, typename Shape, bool kGeneral>
__global__ void __launch_bounds__(Shape::kThreads) forward_kernel(const AttentionParams p, const DropoutSeed seed) {
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
  const Dropout dropout = resolve_dropout(p, seed, blockIdx.x == 0 && threadIdx.x == 0);
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

  // Key tile n (K and V) into stage `stage`.
  auto load_key_tile = [&](int n, int stage) {
    const int64_t col0 = static_cast<int64_t>(n) * kBlockN;
    const int cols = static_cast<int>(smaller(kBlockN, kv_len - col0));
    k_tile_of(stage).template load_async<kThreads>(k + col0 * p.k.stride.row, p.k.stride.row, cols, E);
    v_tile_of(stage).template load_async<kThreads>(v + col0 * p.v.stride.row, p.v.stride.row, cols, Ev);
  };

  q_tile.template load_async<kThreads>(q, p.q.stride.row, q_rows, E);
  if (n_end > n_first) load_key_tile(n_end - 1, 0);
  commit_async_copies();

  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;
  const int warp_row0 = warp * kMTiles * 16;

  float acc[kMTiles][kDBlocks][4] = {};
  RowState<kMTiles> rows;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
    rows.max[mt][0] = rows.max[mt][1] = -INFINITY;
    rows.sum[mt][0] = rows.sum[mt][1] = 0.f;
  }
  const float scale_log2 = static_cast<float>(p.scale) * kLog2e;

  for (int n = n_end - 1; n >= n_first; --n) {
    const int stage = (n_end - 1 - n) & 1;
    if (n > n_first) {
      load_key_tile(n - 1, stage ^ 1);
      commit_async_copies();
      wait_async_copies<1>();
    } else {
      wait_async_copies<0>();
    }
    __syncthreads();
    const KVTile k_tile = k_tile_of(stage), v_tile = v_tile_of(stage);

    // S = Q·Kᵀ for this warp's rows.
    float s[kMTiles][kNBlocks][4] = {};
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

    // Scores into the log2 domain; the rules only where a tile needs them.
    const int64_t col0 = static_cast<int64_t>(n) * kBlockN;
    const bool needs_rules = tile_needs_rules<kGeneral>(p, at, row0 + warp_row0, kMTiles * 16, col0, kBlockN);
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
      const int64_t first_row = row0 + warp_row0 + mt * 16 + g;
      const TileRow<kGeneral> seen[2] = {tile_row<kGeneral>(p, at, first_row, col0, kBlockN),
                                         tile_row<kGeneral>(p, at, first_row + 8, col0, kBlockN)};
#pragma unroll
      for (int nb = 0; nb < kNBlocks; ++nb) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t i = first_row + (e >> 1) * 8;
          const int c = nb * 8 + 2 * t + (e & 1);
          const bool visible = !needs_rules || seen[e >> 1].sees(p, i, col0, c);
          s[mt][nb][e] = log2_score<kGeneral>(p, at, i, col0 + c, s[mt][nb][e], scale_log2, visible);
        }
      }
    }

    // Online softmax: new row maxima, rescale what has been accumulated,
    // S → P = exp2(S − max).
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
        const float shift = new_max == -INFINITY ? 0.f : new_max;
        const float rescale = exp2f(rows.max[mt][half] - shift);
        rows.max[mt][half] = new_max;
        float tile_sum = 0.f;
#pragma unroll
        for (int nb = 0; nb < kNBlocks; ++nb) {
#pragma unroll
          for (int e = 2 * half; e < 2 * half + 2; ++e) {
            s[mt][nb][e] = exp2f(s[mt][nb][e] - shift);
            tile_sum += s[mt][nb][e];
          }
        }
        rows.sum[mt][half] = rows.sum[mt][half] * rescale + tile_sum;
#pragma unroll
        for (int db = 0; db < kDBlocks; ++db) {
          acc[mt][db][2 * half] *= rescale;
          acc[mt][db][2 * half + 1] *= rescale;
        }
      }
    }

    // Dropout drops probabilities after the row sums took them in; the
    // 1 / (1 − p) is applied with the final normalisation.
    if (dropout.enabled) {
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
      for (int mt = 0; mt < kMTiles; ++mt) {
        a[mt][0] = pack_pair<T>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        a[mt][1] = pack_pair<T>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        a[mt][2] = pack_pair<T>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        a[mt][3] = pack_pair<T>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int db = 0; db < kDBlocks; db += 2) {
        uint32_t b[4];
        v_tile.load_b_pair(b, kk * 16, db * 8);
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          mma_16x16x16<T>(acc[mt][db], acc[mt][db + 1], a[mt], b);
        }
      }
    }
    // The next iteration loads into the stage this one has just read.
    __syncthreads();
  }

  // Normalise and write. A fully masked row (max −inf) is written as 0 with
  // logsumexp −inf, as PyTorch's safe softmax gives.
  T* out = static_cast<T*>(p.out.data) + at.seq.batch * p.out.stride.batch + at.h * p.out.stride.head;
  float* lse = static_cast<float*>(p.logsumexp);
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const float sum = quad_sum(rows.sum[mt][half]);
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
      if (t == 0) lse[row_index(p, at, i)] = masked_row ? -INFINITY : (rows.max[mt][half] + log2f(sum)) * kLn2;
    }
  }
}

}  // namespace selfattn::cuda::tc
