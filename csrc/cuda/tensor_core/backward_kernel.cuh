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

// kBlockM query rows a step against kBlockN keys a block, kWarps warps and
// kStages buffers of Q and dO. Each product's result is shared out over the
// warps in a grid, with kSWarpsM warps down the rows of S and dP (kBlockM ×
// kBlockN), kKVWarpsM down those of dK and dV (kBlockN × head dim) and
// kQWarpsM down those of dQ (kBlockM × head dim); a warp's rows are whole
// 16-row m-tiles, and its columns whole pairs of 8-column blocks.
template <int kBlockM_, int kBlockN_, int kWarps_, int kStages_, int kSWarpsM_, int kKVWarpsM_, int kQWarpsM_>
struct BackwardShape {
  static constexpr int kBlockM = kBlockM_, kBlockN = kBlockN_, kWarps = kWarps_, kStages = kStages_;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kSWarpsM = kSWarpsM_, kSWarpsN = kWarps / kSWarpsM, kSMTiles = kBlockM / kSWarpsM / 16;
  static constexpr int kKVWarpsM = kKVWarpsM_, kKVWarpsN = kWarps / kKVWarpsM, kKVMTiles = kBlockN / kKVWarpsM / 16;
  static constexpr int kQWarpsM = kQWarpsM_, kQWarpsN = kWarps / kQWarpsM, kQMTiles = kBlockM / kQWarpsM / 16;
  static_assert(kSWarpsM * kSWarpsN == kWarps && kKVWarpsM * kKVWarpsN == kWarps && kQWarpsM * kQWarpsN == kWarps,
                "warp grids cover the block");
  static_assert(kSMTiles * kSWarpsM * 16 == kBlockM && kKVMTiles * kKVWarpsM * 16 == kBlockN &&
                    kQMTiles * kQWarpsM * 16 == kBlockM,
                "each warp owns whole 16-row tiles");
};

// The warp-level products of the kernel's loop, as named steps. Results
// are mma accumulators (warp_ops.cuh) of kMTiles 16-row m-tiles; `row0` and
// `col0` place the warp's rows and columns in the tiles. Each fragment read
// from shared memory serves every m-tile, or every column block.

// C = A·Bᵀ for the rows of A from row0 against the rows of B from col0,
// both tiles stored k-major: S = Q·Kᵀ, or dP = dO·Vᵀ.
template <typename T, int kDim, typename ATile, typename BTile, int kMTiles, int kBlocks>
__device__ __forceinline__ void product_with_transpose(const ATile& a_tile, const BTile& b_tile, int row0, int col0,
                                                       float (&c)[kMTiles][kBlocks][4]) {
#pragma unroll
  for (int kk = 0; kk < kDim / 16; ++kk) {
    uint32_t a[kMTiles][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) a_tile.load_a(a[mt], row0 + mt * 16, kk * 16);
#pragma unroll
    for (int nb = 0; nb < kBlocks; nb += 2) {
      uint32_t b[4];
      b_tile.load_b_pair_of_transpose(b, col0 + nb * 8, kk * 16);
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) mma_16x16x16<T>(c[mt][nb], c[mt][nb + 1], a[mt], b);
    }
  }
}

// C += Aᵀ·B for the columns of A from key0 (rows of C) and the columns of
// B from col0, both tiles stored with the query rows down: dV += (P∘Z)ᵀ·dO,
// or dK += dSᵀ·Q.
template <typename T, int kBlockM, typename ATile, typename BTile, int kMTiles, int kBlocks>
__device__ __forceinline__ void transpose_product(const ATile& a_tile, const BTile& b_tile, int key0, int col0,
                                                  float (&c)[kMTiles][kBlocks][4]) {
#pragma unroll
  for (int kk = 0; kk < kBlockM / 16; ++kk) {
    uint32_t a[kMTiles][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) a_tile.load_a_of_transpose(a[mt], key0 + mt * 16, kk * 16);
#pragma unroll
    for (int db = 0; db < kBlocks; db += 2) {
      uint32_t b[4];
      b_tile.load_b_pair(b, kk * 16, col0 + db * 8);
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) mma_16x16x16<T>(c[mt][db], c[mt][db + 1], a[mt], b);
    }
  }
}

// dQ = dS·K for the query rows from row0, columns from col0.
template <typename T, int kBlockN, typename ScoreTile, typename KVTile, int kMTiles, int kBlocks>
__device__ __forceinline__ void query_grad_product(const ScoreTile& ds_tile, const KVTile& k_tile, int row0, int col0,
                                                   float (&dq)[kMTiles][kBlocks][4]) {
#pragma unroll
  for (int kk = 0; kk < kBlockN / 16; ++kk) {
    uint32_t a[kMTiles][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) ds_tile.load_a(a[mt], row0 + mt * 16, kk * 16);
#pragma unroll
    for (int db = 0; db < kBlocks; db += 2) {
      uint32_t bk[4];
      k_tile.load_b_pair(bk, kk * 16, col0 + db * 8);
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) mma_16x16x16<T>(dq[mt][db], dq[mt][db + 1], a[mt], bk);
    }
  }
}

// The key blocks a launch covers: [first, first + count) of each kv head.
struct KeyBlocks {
  int first, count;
};

template <typename T, int kDim, typename Shape, Rules kRules>
__global__ void __launch_bounds__(Shape::kThreads)
    backward_kernel(const AttentionBackwardParams bp, const DropoutSeed seed, const BackwardBuffers buffers,
                    const KeyBlocks key_blocks) {
  constexpr int kBlockM = Shape::kBlockM, kBlockN = Shape::kBlockN, kThreads = Shape::kThreads;
  constexpr int kStages = Shape::kStages;
  constexpr int kSMTiles = Shape::kSMTiles, kKVMTiles = Shape::kKVMTiles, kQMTiles = Shape::kQMTiles;
  constexpr int kSCols = kBlockN / Shape::kSWarpsN;  // S and dP columns per warp
  constexpr int kKVCols = kDim / Shape::kKVWarpsN;   // dK and dV columns per warp
  constexpr int kQCols = kDim / Shape::kQWarpsN;     // dQ columns per warp
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

  // Blocks take (sequence, kv head, key tile) in that order, the key tiles
  // of key_blocks (up to the longest sequence's).
  // (In 32 bits: the grid has fewer than 2³¹ blocks, and a 64-bit division
  // is a call, whose registers the caller saves on the stack.)
  const int n_blocks = key_blocks.count;
  const int head = static_cast<int>(blockIdx.x) / n_blocks;  // s·H + kv head
  const int kv_heads = static_cast<int>(p.kv_heads);
  const int64_t sequence_index = head / kv_heads, kv_head = head % kv_heads;
  const int64_t group = static_cast<int>(p.q_heads) / kv_heads;  // query heads that read this kv head
  // The sequence's lengths and diagonal, the same for every query head.
  const SequenceHead<float> group_head = block_head<kGeneral>(p, sequence_index, kv_head * group);
  const Sequence seq = group_head.seq;
  const int64_t col0 = static_cast<int64_t>(key_blocks.first + static_cast<int>(blockIdx.x) % n_blocks) * kBlockN;
  // Past the sequence's keys: no block of this head's writes them (the
  // caller zeroes the unused keys of a cache).
  if (col0 >= seq.kv_len) return;
  const int cols = static_cast<int>(smaller(kBlockN, seq.kv_len - col0));
  // The tiles of query rows that see some key of the block.
  const KeyRange rows = rows_seeing_keys<kGeneral>(p, group_head, col0, cols);
  const int64_t m_first = rows.first / kBlockM;
  const int64_t m_per_head = rows.end > rows.first ? ceil_div(rows.end, kBlockM) - m_first : 0;
  const int iterations = static_cast<int>(group * m_per_head);
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
  // The iterations walk the group's query heads and, in each, its query
  // tiles from m_first: iteration (head, tile) of the walk, counted from 0.
  const int tiles = static_cast<int>(m_per_head);
  auto following = [&](int& head_in_group, int& tile) {
    if (++tile == tiles) {
      tile = 0;
      ++head_in_group;
    }
  };
  const TileCopy<T, kBlockM, kDim, kThreads> copy_q{p.q.stride.row, E}, copy_do{bp.grad_out.stride.row, Ev};
  auto load_query_side = [&](int head_in_group, int tile, int stage) {
    const int64_t h = kv_head * group + head_in_group, row0 = (m_first + tile) * kBlockM;
    const int rows = static_cast<int>(smaller(kBlockM, seq.q_len - row0));
    const int64_t query_row = seq.q_begin + row0;
    const T* q = static_cast<const T*>(p.q.data) + seq.batch * p.q.stride.batch + h * p.q.stride.head +
                 query_row * p.q.stride.row;
    const T* dout = static_cast<const T*>(bp.grad_out.data) + seq.batch * bp.grad_out.stride.batch +
                    h * bp.grad_out.stride.head + query_row * bp.grad_out.stride.row;
    copy_q.first_rows(q_tile_of(stage), q, rows);
    copy_do.first_rows(do_tile_of(stage), dout, rows);
  };
  if (iterations > 0) load_query_side(0, 0, 0);
  commit_async_copies();

  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;

  const int kv_row0 = warp % Shape::kKVWarpsM * kKVMTiles * 16, kv_col0 = warp / Shape::kKVWarpsM * kKVCols;
  float dk[kKVMTiles][kKVCols / 8][4] = {}, dv[kKVMTiles][kKVCols / 8][4] = {};

  int head_in_group = 0, tile = 0;
  for (int it = 0; it < iterations; ++it) {
    const int stage = kStages == 2 ? static_cast<int>(it & 1) : 0;
    int next_head_in_group = head_in_group, next_tile = tile;
    following(next_head_in_group, next_tile);
    if (kStages == 2 && it + 1 < iterations) {
      load_query_side(next_head_in_group, next_tile, stage ^ 1);
      commit_async_copies();
      wait_async_copies<1>();
    } else {
      wait_async_copies<0>();
    }
    __syncthreads();
    const QTile q_tile = q_tile_of(stage), do_tile = do_tile_of(stage);
    // The first row and column of this warp's share of each product.
    const int s_row0 = warp % Shape::kSWarpsM * kSMTiles * 16, s_col0 = warp / Shape::kSWarpsM * kSCols;
    const int q_row0 = warp % Shape::kQWarpsM * kQMTiles * 16, q_col0 = warp / Shape::kQWarpsM * kQCols;
    const int64_t h = kv_head * group + head_in_group, row0 = (m_first + tile) * kBlockM;
    const SequenceHead<float> at = block_head<kGeneral>(p, sequence_index, h);

    // S = Q·Kᵀ and dP = dO·Vᵀ for this warp's rows and columns.
    float s[kSMTiles][kSCols / 8][4] = {}, dp[kSMTiles][kSCols / 8][4] = {};
    // One after the other: while S is summed, dP holds no register.
    product_with_transpose<T, kDim>(q_tile, k_tile, s_row0, s_col0, s);
    product_with_transpose<T, kDim>(do_tile, v_tile, s_row0, s_col0, dp);

    // The rows this thread holds, mt·16 + g and mt·16 + g + 8 of the warp's:
    // their logsumexp (log2 domain) and D.
    float lse_log2[kSMTiles][2], delta[kSMTiles][2];
#pragma unroll
    for (int mt = 0; mt < kSMTiles; ++mt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int64_t i = row0 + s_row0 + mt * 16 + g + half * 8;
        const bool row_inside = i < seq.q_len;
        const int64_t row = row_index(p, at, i);
        const float lse = row_inside ? static_cast<const float*>(p.logsumexp)[row] : -INFINITY;
        // A fully masked row (lse −inf) has P = 0: shifting by +inf gives exp2(−inf).
        lse_log2[mt][half] = lse == -INFINITY ? INFINITY : lse * kLog2e;
        delta[mt][half] = row_inside ? static_cast<const float*>(bp.delta)[row] : 0.f;
      }
    }

    if constexpr (kFast) {
      // The rules of the fast paths, on the tiles that cross an edge alone.
      if (fast_tile_crosses_edge<kRules == Rules::kCausal>(row0, col0, kBlockN, seq.kv_len)) {
#pragma unroll
        for (int mt = 0; mt < kSMTiles; ++mt) {
          mask_edge_scores<kRules == Rules::kCausal>(s[mt], row0 + s_row0 + mt * 16 + g, col0 + s_col0,
                                                     seq.kv_len);
        }
      }
#pragma unroll
      for (int mt = 0; mt < kSMTiles; ++mt) {
#pragma unroll
        for (int nb = 0; nb < kSCols / 8; ++nb) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float prob = exp2f(fmaf(s[mt][nb][e], scale_log2, -lse_log2[mt][e >> 1]));
            s[mt][nb][e] = prob;
            dp[mt][nb][e] = prob * (dp[mt][nb][e] - delta[mt][e >> 1]);
          }
        }
      }
    } else {
      const bool needs_rules = tile_needs_rules<kGeneral>(p, at, row0, kBlockM, col0, kBlockN);
#pragma unroll
      for (int mt = 0; mt < kSMTiles; ++mt) {
        const int64_t first_row = row0 + s_row0 + mt * 16 + g;
        const TileRowPair<kGeneral> seen = tile_row_pair<kGeneral>(p, at, first_row, col0, kBlockN);
#pragma unroll
        for (int nb = 0; nb < kSCols / 8; ++nb) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int half = e >> 1;
            const int64_t i = first_row + half * 8;
            const int c = s_col0 + nb * 8 + 2 * t + (e & 1);
            const int64_t j = col0 + c;
            const bool inside = i < seq.q_len && j < seq.kv_len;
            const bool visible = !needs_rules || seen.half[half].sees(p, i, col0, c);
            float cap_slope;
            const float x = log2_score<kGeneral>(p, at, i, j, s[mt][nb][e], scale_log2, visible, &cap_slope);
            const float prob = exp2f(x - lse_log2[mt][half]);
            float z = 1.f;
            if (dropout.enabled && inside) {
              z = dropout.keeps(dropout_index<kGeneral>(p, at, i, j)) ? static_cast<float>(dropout.keep_scale)
                                                                       : 0.f;
            }
            const float ds = prob * (dp[mt][nb][e] * z - delta[mt][half]);
            // The mask is added after the softcap: its gradient is dS itself.
            if (mask_grad && inside && visible) {
              add_mask_gradient<float>(buffers, seq.batch, h, at.q_row(i), at.k_row(j), ds);
            }
            s[mt][nb][e] = prob * z;
            dp[mt][nb][e] = ds * cap_slope;
          }
        }
      }
    }
#pragma unroll
    for (int mt = 0; mt < kSMTiles; ++mt) {
#pragma unroll
      for (int nb = 0; nb < kSCols / 8; ++nb) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int row = s_row0 + mt * 16 + g + half * 8, col = s_col0 + nb * 8 + 2 * t;
          p_tile.store_pair(row, col, pack_pair<T>(s[mt][nb][2 * half], s[mt][nb][2 * half + 1]));
          ds_tile.store_pair(row, col, pack_pair<T>(dp[mt][nb][2 * half], dp[mt][nb][2 * half + 1]));
        }
      }
    }
    __syncthreads();

    // dV += (P∘Z)ᵀ·dO and dK += dSᵀ·Q for this warp's keys and columns, one
    // after the other, so that half as many fragments are in flight.
    transpose_product<T, kBlockM>(p_tile, do_tile, kv_row0, kv_col0, dv);
    transpose_product<T, kBlockM>(ds_tile, q_tile, kv_row0, kv_col0, dk);
    // A fence for the compiler's scheduling, not for the data: without it
    // the dQ product runs alongside, and both products' accumulators at
    // once spill (measured with benchmarks/sass_gate.py).
    __syncthreads();

    // dQ += dS·K for this warp's rows and columns, into the float32 buffer.
    {
      float dq[kQMTiles][kQCols / 8][4] = {};
      query_grad_product<T, kBlockN>(ds_tile, k_tile, q_row0, q_col0, dq);
      // Every column of every row, without a test (see BackwardBuffers):
      // a branch would also make the loop's end a point where the warp
      // reconverges, a call whose registers go to the stack.
#pragma unroll
      for (int mt = 0; mt < kQMTiles; ++mt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int64_t i = row0 + q_row0 + mt * 16 + g + half * 8;
          float* const accum =
              buffers.grad_q_accum + row_index(p, at, i) * buffers.grad_q_accum_row_stride + q_col0 + 2 * t;
#pragma unroll
          for (int db = 0; db < kQCols / 8; ++db) {
            atomicAdd(accum + db * 8, dq[mt][db][2 * half]);
            atomicAdd(accum + db * 8 + 1, dq[mt][db][2 * half + 1]);
          }
        }
      }
    }
    __syncthreads();
    if (kStages == 1 && it + 1 < iterations) {
      load_query_side(next_head_in_group, next_tile, 0);
      commit_async_copies();
    }
    head_in_group = next_head_in_group;
    tile = next_tile;
  }

  // dK = scale·Σ dSᵀ·Q and dV, one writer per element.
  const float scale = static_cast<float>(p.scale);
#pragma unroll
  for (int mt = 0; mt < kKVMTiles; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t j = col0 + kv_row0 + mt * 16 + g + half * 8;
      if (j >= seq.kv_len) continue;
      const int64_t key_row = seq.k_begin + j;
      T* grad_k = static_cast<T*>(bp.grad_k.data) + seq.batch * bp.grad_k.stride.batch +
                  kv_head * bp.grad_k.stride.head + key_row * bp.grad_k.stride.row;
      T* grad_v = static_cast<T*>(bp.grad_v.data) + seq.batch * bp.grad_v.stride.batch +
                  kv_head * bp.grad_v.stride.head + key_row * bp.grad_v.stride.row;
#pragma unroll
      for (int db = 0; db < kKVCols / 8; ++db) {
        const int col = kv_col0 + db * 8 + 2 * t;
        if (col < E) {
          *reinterpret_cast<uint32_t*>(grad_k + col) =
              pack_pair<T>(dk[mt][db][2 * half] * scale, dk[mt][db][2 * half + 1] * scale);
        }
        if (col < Ev) {
          *reinterpret_cast<uint32_t*>(grad_v + col) = pack_pair<T>(dv[mt][db][2 * half], dv[mt][db][2 * half + 1]);
        }
      }
    }
  }
}

}  // namespace selfattn::cuda::tc
