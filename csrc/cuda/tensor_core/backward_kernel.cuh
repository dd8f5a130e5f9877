// FlashAttention-2 backward with mma.sync. A block owns kBlockN key rows of
// one key/value head of one sequence and keeps their dK and dV in
// registers; it walks over every tile of kBlockM query rows that sees some
// of those keys, of every query head that reads this kv head (GQA needs no
// expanded K/V and no reduction afterwards):
//
//   load K, V (once), Q[0], dO[0]
//   for each query tile:                   (Q, dO double-buffered where shared memory allows)
//     S = Q·Kᵀ, dP = dO·Vᵀ                 mma.sync
//     P = exp2(S − lse), dS = P ∘ (Z∘dP − D)  in registers; Z the dropout multipliers
//     (dS into the mask gradient, then times the softcap's derivative)
//     P∘Z and dS → shared memory
//     dV += (P∘Z)ᵀ·dO, dK += dSᵀ·Q           transposed reads with ldmatrix.trans
//     dQ += dS·K                            atomically added into a float32 buffer
//   write dK·scale, dV
#pragma once

#include "cuda/tensor_core/forward_kernel.cuh"

namespace selfattn::cuda::tc {

template <int kBlockM_, int kBlockN_, int kWarps_, int kStages_>
struct BackwardShape {
  static constexpr int kBlockM = kBlockM_, kBlockN = kBlockN_, kWarps = kWarps_, kStages = kStages_;
  static constexpr int kThreads = kWarps * 32;
  // S, dP and dQ: warps in a grid of kWarpsM 16-row tiles × kWarpsN column groups.
  static constexpr int kWarpsM = kBlockM / 16, kWarpsN = kWarps / kWarpsM;
  // dK and dV: warps in a grid of kKVWarpsM 16-row tiles × kKVWarpsN column groups.
  static constexpr int kKVWarpsM = kBlockN / 16 < kWarps ? kBlockN / 16 : kWarps;
  static constexpr int kKVWarpsN = kWarps / kKVWarpsM;
  static_assert(kWarpsM * kWarpsN == kWarps && kKVWarpsM * kKVWarpsN == kWarps, "warp grids cover the block");
  static_assert(kKVWarpsM * 16 == kBlockN, "each warp owns one 16-row tile of dK and dV");
};

// The warp-level products of the kernel's loop, as named steps. Results
// are mma accumulators (warp_ops.cuh); `row0`/`col0` place the warp's
// 16-row and column slices in the tiles.

// S = Q·Kᵀ and dP = dO·Vᵀ for 16 query rows from row0 against the keys from col0.
template <typename T, int kDim, typename QTile, typename KVTile, int kBlocks>
__device__ __forceinline__ void scores_and_probability_grads(const QTile& q_tile, const QTile& do_tile,
                                                             const KVTile& k_tile, const KVTile& v_tile, int row0,
                                                             int col0, float (&s)[kBlocks][4],
                                                             float (&dp)[kBlocks][4]) {
#pragma unroll
  for (int kk = 0; kk < kDim / 16; ++kk) {
    uint32_t a[4], a_do[4];
    q_tile.load_a(a, row0, kk * 16);
    do_tile.load_a(a_do, row0, kk * 16);
#pragma unroll
    for (int nb = 0; nb < kBlocks; nb += 2) {
      uint32_t bk[4], bv[4];
      k_tile.load_b_pair_of_transpose(bk, col0 + nb * 8, kk * 16);
      v_tile.load_b_pair_of_transpose(bv, col0 + nb * 8, kk * 16);
      mma_16x16x16<T>(s[nb], s[nb + 1], a, bk);
      mma_16x16x16<T>(dp[nb], dp[nb + 1], a_do, bv);
    }
  }
}

// dV += (P∘Z)ᵀ·dO and dK += dSᵀ·Q for 16 keys from key0, columns from col0.
template <typename T, int kBlockM, typename ScoreTile, typename QTile, int kBlocks>
__device__ __forceinline__ void accumulate_key_grads(const ScoreTile& p_tile, const ScoreTile& ds_tile,
                                                     const QTile& do_tile, const QTile& q_tile, int key0, int col0,
                                                     float (&dv)[kBlocks][4], float (&dk)[kBlocks][4]) {
#pragma unroll
  for (int kk = 0; kk < kBlockM / 16; ++kk) {
    uint32_t a_p[4], a_ds[4];
    p_tile.load_a_of_transpose(a_p, key0, kk * 16);
    ds_tile.load_a_of_transpose(a_ds, key0, kk * 16);
#pragma unroll
    for (int db = 0; db < kBlocks; db += 2) {
      uint32_t b_do[4], b_q[4];
      do_tile.load_b_pair(b_do, kk * 16, col0 + db * 8);
      q_tile.load_b_pair(b_q, kk * 16, col0 + db * 8);
      mma_16x16x16<T>(dv[db], dv[db + 1], a_p, b_do);
      mma_16x16x16<T>(dk[db], dk[db + 1], a_ds, b_q);
    }
  }
}

// dQ = dS·K for 16 query rows from row0, columns from col0.
template <typename T, int kBlockN, typename ScoreTile, typename KVTile, int kBlocks>
__device__ __forceinline__ void query_grad_product(const ScoreTile& ds_tile, const KVTile& k_tile, int row0, int col0,
                                                   float (&dq)[kBlocks][4]) {
#pragma unroll
  for (int kk = 0; kk < kBlockN / 16; ++kk) {
    uint32_t a[4];
    ds_tile.load_a(a, row0, kk * 16);
#pragma unroll
    for (int db = 0; db < kBlocks; db += 2) {
      uint32_t bk[4];
      k_tile.load_b_pair(bk, kk * 16, col0 + db * 8);
      mma_16x16x16<T>(dq[db], dq[db + 1], a, bk);
    }
  }
}

template <typename T, int kDim, typename Shape, Rules kRules>
__global__ void __launch_bounds__(Shape::kThreads)
    backward_kernel(const AttentionBackwardParams bp, const DropoutSeed seed, const BackwardBuffers buffers) {
  constexpr int kBlockM = Shape::kBlockM, kBlockN = Shape::kBlockN, kThreads = Shape::kThreads;
  constexpr int kStages = Shape::kStages;
  constexpr int kSCols = kBlockN / Shape::kWarpsN;     // S columns per warp
  constexpr int kQCols = kDim / Shape::kWarpsN;        // dQ columns per warp
  constexpr int kKVCols = kDim / Shape::kKVWarpsN;     // dK, dV columns per warp
  static_assert(kSCols % 16 == 0 && kQCols % 16 == 0 && kKVCols % 16 == 0, "pairs of 8-column blocks");
  using KVTile = SharedTile<T, kBlockN, kDim>;
  using QTile = SharedTile<T, kBlockM, kDim>;
  using PTile = SharedTile<T, kBlockM, kBlockN>;
  const AttentionParams& p = bp.fwd;
  constexpr bool kGeneral = kRules == Rules::kGeneral;
  constexpr bool kFast = is_fast(kRules);

  extern __shared__ __align__(128) unsigned char smem[];
  unsigned char* next = smem;
  auto carve = [&](int bytes) { T* at = reinterpret_cast<T*>(next); next += bytes; return at; };
  const KVTile k_tile{carve(KVTile::kBytes)}, v_tile{carve(KVTile::kBytes)};
  // Stage st of Q and dO: the stages lie back to back.
  T* const q_stages = carve(kStages * QTile::kBytes);
  T* const do_stages = carve(kStages * QTile::kBytes);
  auto q_tile_of = [&](int stage) { return QTile{q_stages + stage * (QTile::kBytes / int(sizeof(T)))}; };
  auto do_tile_of = [&](int stage) { return QTile{do_stages + stage * (QTile::kBytes / int(sizeof(T)))}; };
  const PTile p_tile{carve(PTile::kBytes)}, ds_tile{carve(PTile::kBytes)};

  // Blocks take (sequence, kv head, key tile) in that order, key tiles up to
  // the longest sequence's.
  const int64_t n_blocks = ceil_div(p.max_seqlen_k, kBlockN);
  const int64_t head = blockIdx.x / n_blocks;  // s·H + kv head
  const int64_t sequence_index = head / p.kv_heads, kv_head = head % p.kv_heads;
  // The sequence's lengths and diagonal, the same for every query head.
  const SequenceHead<float> group_head = block_head<kGeneral>(p, sequence_index, kv_head * p.group_size());
  const Sequence seq = group_head.seq;
  const int64_t col0 = (blockIdx.x % n_blocks) * kBlockN;
  // Past the sequence's keys: no block of this head's writes them (the
  // caller zeroes the unused keys of a cache).
  if (col0 >= seq.kv_len) return;
  const int cols = static_cast<int>(smaller(kBlockN, seq.kv_len - col0));
  const int64_t group = p.group_size();
  // The tiles of query rows that see some key of the block.
  const KeyRange rows = rows_seeing_keys<kGeneral>(p, group_head, col0, cols);
  const int64_t m_first = rows.first / kBlockM;
  const int64_t m_per_head = rows.end > rows.first ? ceil_div(rows.end, kBlockM) - m_first : 0;
  const int64_t iterations = group * m_per_head;
  const int E = static_cast<int>(p.head_dim), Ev = static_cast<int>(p.value_dim);

  const Dropout dropout = kFast ? Dropout{} : resolve_dropout(p, seed, false);
  const float scale_log2 = static_cast<float>(p.scale) * kLog2e;
  const bool mask_grad = !kFast && buffers.grad_mask_accum.data != nullptr;

  {
    const int64_t key_row = seq.k_begin + col0;
    const T* k = static_cast<const T*>(p.k.data) + seq.batch * p.k.stride.batch + kv_head * p.k.stride.head;
    const T* v = static_cast<const T*>(p.v.data) + seq.batch * p.v.stride.batch + kv_head * p.v.stride.head;
    TileCopy<T, kBlockN, kDim, kThreads>{p.k.stride.row, E}.first_rows(k_tile, k + key_row * p.k.stride.row, cols);
    TileCopy<T, kBlockN, kDim, kThreads>{p.v.stride.row, Ev}.first_rows(v_tile, v + key_row * p.v.stride.row, cols);
  }
  // Query head and first row of iteration `it`.
  // (A group's query tiles are far fewer than 2³¹: 32-bit division, a
  // fraction of the 64-bit one's instructions.)
  auto query_tile = [&](int64_t it, int64_t& h, int64_t& row0) {
    const int tiles = static_cast<int>(m_per_head), i = static_cast<int>(it);
    h = kv_head * group + i / tiles;
    row0 = (m_first + i % tiles) * kBlockM;
  };
  const TileCopy<T, kBlockM, kDim, kThreads> copy_q{p.q.stride.row, E}, copy_do{bp.grad_out.stride.row, Ev};
  auto load_query_side = [&](int64_t it, int stage) {
    int64_t h, row0;
    query_tile(it, h, row0);
    const int rows = static_cast<int>(smaller(kBlockM, seq.q_len - row0));
    const int64_t query_row = seq.q_begin + row0;
    const T* q = static_cast<const T*>(p.q.data) + seq.batch * p.q.stride.batch + h * p.q.stride.head +
                 query_row * p.q.stride.row;
    const T* dout = static_cast<const T*>(bp.grad_out.data) + seq.batch * bp.grad_out.stride.batch +
                    h * bp.grad_out.stride.head + query_row * bp.grad_out.stride.row;
    copy_q.first_rows(q_tile_of(stage), q, rows);
    copy_do.first_rows(do_tile_of(stage), dout, rows);
  };
  if (iterations > 0) load_query_side(0, 0);
  commit_async_copies();

  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;
  const int wm = warp % Shape::kWarpsM, wn = warp / Shape::kWarpsM;        // S, dP and dQ
  const int kvm = warp % Shape::kKVWarpsM, kvn = warp / Shape::kKVWarpsM;  // dK and dV

  float dk[kKVCols / 8][4] = {}, dv[kKVCols / 8][4] = {};

  for (int64_t it = 0; it < iterations; ++it) {
    const int stage = kStages == 2 ? static_cast<int>(it & 1) : 0;
    if (kStages == 2 && it + 1 < iterations) {
      load_query_side(it + 1, static_cast<int>((it + 1) & 1));
      commit_async_copies();
      wait_async_copies<1>();
    } else {
      wait_async_copies<0>();
    }
    __syncthreads();
    const QTile q_tile = q_tile_of(stage), do_tile = do_tile_of(stage);
    int64_t h, row0;
    query_tile(it, h, row0);
    const SequenceHead<float> at = block_head<kGeneral>(p, sequence_index, h);

    // S = Q·Kᵀ and dP = dO·Vᵀ for this warp's 16 rows × kSCols columns.
    float s[kSCols / 8][4] = {}, dp[kSCols / 8][4] = {};
    scores_and_probability_grads<T, kDim>(q_tile, do_tile, k_tile, v_tile, wm * 16, wn * kSCols, s, dp);

    // The two rows this thread holds: their logsumexp (log2 domain) and D.
    float lse_log2[2], delta[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t i = row0 + wm * 16 + g + half * 8;
      const bool row_inside = i < seq.q_len;
      const int64_t row = row_index(p, at, i);
      const float lse = row_inside ? static_cast<const float*>(p.logsumexp)[row] : -INFINITY;
      // A fully masked row (lse −inf) has P = 0: shifting by +inf gives exp2(−inf).
      lse_log2[half] = lse == -INFINITY ? INFINITY : lse * kLog2e;
      delta[half] = row_inside ? static_cast<const float*>(bp.delta)[row] : 0.f;
    }

    if constexpr (kFast) {
      // The rules of the fast paths, on the tiles that cross an edge alone.
      if (fast_tile_crosses_edge<kRules == Rules::kCausal>(row0, col0, kBlockN, seq.kv_len)) {
        mask_edge_scores<kRules == Rules::kCausal>(s, row0 + wm * 16 + g, col0 + wn * kSCols, seq.kv_len);
      }
#pragma unroll
      for (int nb = 0; nb < kSCols / 8; ++nb) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float prob = exp2f(fmaf(s[nb][e], scale_log2, -lse_log2[e >> 1]));
          s[nb][e] = prob;
          dp[nb][e] = prob * (dp[nb][e] - delta[e >> 1]);
        }
      }
    } else {
      const bool needs_rules = tile_needs_rules<kGeneral>(p, at, row0, kBlockM, col0, kBlockN);
      const TileRow<kGeneral> seen[2] = {tile_row<kGeneral>(p, at, row0 + wm * 16 + g, col0, kBlockN),
                                         tile_row<kGeneral>(p, at, row0 + wm * 16 + g + 8, col0, kBlockN)};
#pragma unroll
      for (int nb = 0; nb < kSCols / 8; ++nb) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int half = e >> 1;
          const int64_t i = row0 + wm * 16 + g + half * 8;
          const int c = wn * kSCols + nb * 8 + 2 * t + (e & 1);
          const int64_t j = col0 + wn * kSCols + nb * 8 + 2 * t + (e & 1);
          const bool inside = i < seq.q_len && j < seq.kv_len;
          const bool visible = !needs_rules || seen[half].sees(p, i, col0, c);
          float cap_slope;
          const float x = log2_score<kGeneral>(p, at, i, j, s[nb][e], scale_log2, visible, &cap_slope);
          const float prob = exp2f(x - lse_log2[half]);
          float z = 1.f;
          if (dropout.enabled && inside) {
            z = dropout.keeps(dropout_index<kGeneral>(p, at, i, j)) ? static_cast<float>(dropout.keep_scale) : 0.f;
          }
          const float ds = prob * (dp[nb][e] * z - delta[half]);
          // The mask is added after the softcap: its gradient is dS itself.
          if (mask_grad && inside && visible) {
            add_mask_gradient<float>(buffers, seq.batch, h, at.q_row(i), at.k_row(j), ds);
          }
          s[nb][e] = prob * z;
          dp[nb][e] = ds * cap_slope;
        }
      }
    }
#pragma unroll
    for (int nb = 0; nb < kSCols / 8; ++nb) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = wm * 16 + g + half * 8, col = wn * kSCols + nb * 8 + 2 * t;
        p_tile.store_pair(row, col, pack_pair<T>(s[nb][2 * half], s[nb][2 * half + 1]));
        ds_tile.store_pair(row, col, pack_pair<T>(dp[nb][2 * half], dp[nb][2 * half + 1]));
      }
    }
    __syncthreads();

    // dV += (P∘Z)ᵀ·dO and dK += dSᵀ·Q for this warp's 16 keys × kKVCols columns.
    accumulate_key_grads<T, kBlockM>(p_tile, ds_tile, do_tile, q_tile, kvm * 16, kvn * kKVCols, dv, dk);

    // dQ += dS·K for this warp's 16 rows × kQCols columns, into the float32 buffer.
    {
      float dq[kQCols / 8][4] = {};
      query_grad_product<T, kBlockN>(ds_tile, k_tile, wm * 16, wn * kQCols, dq);
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int64_t i = row0 + wm * 16 + g + half * 8;
        if (i >= seq.q_len) continue;
        float* accum = buffers.grad_q_accum + row_index(p, at, i) * E;
#pragma unroll
        for (int db = 0; db < kQCols / 8; ++db) {
          const int col = wn * kQCols + db * 8 + 2 * t;
          if (col < E) {
            atomicAdd(accum + col, dq[db][2 * half]);
            atomicAdd(accum + col + 1, dq[db][2 * half + 1]);
          }
        }
      }
    }
    __syncthreads();
    if (kStages == 1 && it + 1 < iterations) {
      load_query_side(it + 1, 0);
      commit_async_copies();
    }
  }

  // dK = scale·Σ dSᵀ·Q and dV, one writer per element.
  const float scale = static_cast<float>(p.scale);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t j = col0 + kvm * 16 + g + half * 8;
    if (j >= seq.kv_len) continue;
    const int64_t key_row = seq.k_begin + j;
    T* grad_k = static_cast<T*>(bp.grad_k.data) + seq.batch * bp.grad_k.stride.batch +
                kv_head * bp.grad_k.stride.head + key_row * bp.grad_k.stride.row;
    T* grad_v = static_cast<T*>(bp.grad_v.data) + seq.batch * bp.grad_v.stride.batch +
                kv_head * bp.grad_v.stride.head + key_row * bp.grad_v.stride.row;
#pragma unroll
    for (int db = 0; db < kKVCols / 8; ++db) {
      const int col = kvn * kKVCols + db * 8 + 2 * t;
      if (col < E) {
        *reinterpret_cast<uint32_t*>(grad_k + col) =
            pack_pair<T>(dk[db][2 * half] * scale, dk[db][2 * half + 1] * scale);
      }
      if (col < Ev) {
        *reinterpret_cast<uint32_t*>(grad_v + col) = pack_pair<T>(dv[db][2 * half], dv[db][2 * half + 1]);
      }
    }
  }
}

}  // namespace selfattn::cuda::tc
