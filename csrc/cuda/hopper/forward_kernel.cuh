// FlashAttention forward for Hopper, warp-specialised. A block owns 128 query
// rows of one head and has three warpgroups:
//
//   producer (warpgroup 0, one thread):  Q once, then K[n] and V[n] for each
//     key tile n, last first, by the copy engine (TMA) into a ring of
//     kStages shared-memory stages; each load completes on a "full" barrier,
//     and a stage is refilled only after its "empty" barrier says every
//     consumer warp is done with it.
//   consumers (warpgroups 1 and 2, 64 query rows each), per key tile:
//     wait for K[n];  S = Q·K[n]ᵀ        wgmma, Q and K from shared memory
//     scores → log2 domain, masks, online softmax     exp2, in registers
//     wait for V[n];  O += P·V[n]        wgmma, P from registers (16-bit)
//     release the stage
//   then O / rowsum and the logsumexp go to global memory.
//
// setmaxnreg gives the consumers 240 registers each and the producer 24.
// Copies of later tiles overlap the products of earlier ones through the
// ring; the two consumers overlap each other only as the warp schedulers
// interleave them (no explicit ping-pong yet).
#pragma once

#include <cuda.h>

#include "cuda/device/elements.cuh"
#include "cuda/hopper/arch.cuh"
#include "cuda/hopper/launchers.h"
#include "cuda/hopper/online_softmax.cuh"
#include "cuda/hopper/swizzled_tile.cuh"
#include "cuda/hopper/warpgroup.cuh"
#include "cuda/hopper/wgmma.cuh"

namespace selfattn::cuda::hopper {

template <typename T, int kDim_>
struct ForwardPlan {
  static constexpr int kDim = kDim_;
  static constexpr int kBlockM = kForwardBlockM;  // query rows per block
  static constexpr int kBlockN = kForwardBlockN;  // keys per tile
  static constexpr int kConsumers = 2;
  static constexpr int kConsumerRows = kBlockM / kConsumers;  // wgmma's M
  static constexpr int kConsumerWarps = kConsumers * 4;
  static constexpr int kThreads = (1 + kConsumers) * kWarpgroupThreads;
  // The ring: two stages of K and V at head dim 128 (64 KB each), four at 64.
  static constexpr int kStages = kDim == 64 ? 4 : 2;

  static constexpr int kProducerRegisters = 24;
  static constexpr int kConsumerRegisters = 240;
  // What setmaxnreg hands out must fit in what the block starts with: the
  // register file's 64K over the threads, rounded down to a multiple of 8.
  static_assert((kProducerRegisters + kConsumers * kConsumerRegisters) * kWarpgroupThreads <=
                    65536 / kThreads / 8 * 8 * kThreads,
                "the register split exceeds the block's registers");

  using QTile = SwizzledTile<T, kBlockM, kDim>;
  using KVTile = SwizzledTile<T, kBlockN, kDim>;

  struct Barriers {
    SharedBarrier q_full;
    SharedBarrier k_full[kStages];
    SharedBarrier v_full[kStages];
    SharedBarrier kv_empty[kStages];

    __device__ __forceinline__ void init() {
      q_full.init(1);
#pragma unroll
      for (int stage = 0; stage < kStages; ++stage) {
        k_full[stage].init(1);
        v_full[stage].init(1);
        kv_empty[stage].init(kConsumerWarps);
      }
    }
  };

  // Shared memory: Q, the K stages, the V stages, the barriers; the tiles
  // start on 1024-byte boundaries, for which the block asks 1 KB extra.
  static constexpr int kKOffset = QTile::kBytes;
  static constexpr int kVOffset = kKOffset + kStages * KVTile::kBytes;
  static constexpr int kBarrierOffset = kVOffset + kStages * KVTile::kBytes;
  static constexpr int kSharedBytes = kSwizzleAtomBytes + kBarrierOffset + static_cast<int>(sizeof(Barriers));
};

// The block's shared memory, laid out by its plan.
template <typename Plan>
struct ForwardStorage {
  uint32_t base;  // 1024-byte aligned shared-memory address
  typename Plan::Barriers* barriers;

  __device__ __forceinline__ typename Plan::QTile q() const { return {base}; }
  __device__ __forceinline__ typename Plan::KVTile k(int stage) const {
    return {base + Plan::kKOffset + stage * Plan::KVTile::kBytes};
  }
  __device__ __forceinline__ typename Plan::KVTile v(int stage) const {
    return {base + Plan::kVOffset + stage * Plan::KVTile::kBytes};
  }
};

// The rows and heads a block works on.
struct QueryBlock {
  int64_t batch, head, kv_head;
  int64_t row0;  // first query row
  int n_tiles;   // key tiles that hold a column some row of the block sees
};

template <int kBlockM, int kBlockN>
__device__ __forceinline__ QueryBlock query_block(const AttentionParams& p) {
  // Under causal masking the late row blocks, which see the most keys, go
  // first, so the tail of the grid is short blocks.
  const int64_t m_blocks = ceil_div(p.q_len, kBlockM);
  const int64_t head = blockIdx.x / m_blocks, m_index = blockIdx.x % m_blocks;
  QueryBlock block;
  block.batch = head / p.q_heads;
  block.head = head % p.q_heads;
  block.kv_head = block.head / p.group_size();
  block.row0 = (p.causal ? m_blocks - 1 - m_index : m_index) * kBlockM;
  const int64_t visible_cols = p.causal ? smaller(p.kv_len, block.row0 + kBlockM) : p.kv_len;
  block.n_tiles = static_cast<int>(ceil_div(visible_cols, kBlockN));
  return block;
}

// The producer's loop (one thread). TMA coordinates are 32-bit; the host
// takes only tensors whose sizes fit (hopper_forward_supports).
template <typename Plan>
__device__ __forceinline__ void load_tiles(const ForwardStorage<Plan>& storage, const QueryBlock& block,
                                           const CUtensorMap& q_map, const CUtensorMap& k_map,
                                           const CUtensorMap& v_map) {
  prefetch_tensor_map(q_map);
  prefetch_tensor_map(k_map);
  prefetch_tensor_map(v_map);
  typename Plan::Barriers& bars = *storage.barriers;
  const int batch = static_cast<int>(block.batch), kv_head = static_cast<int>(block.kv_head);
  bars.q_full.arrive_expect_bytes(Plan::QTile::kBytes);
  storage.q().load(q_map, static_cast<int>(block.row0), static_cast<int>(block.head), batch, bars.q_full);
  for (int i = 0; i < block.n_tiles; ++i) {
    const int stage = i % Plan::kStages;
    // The stage's previous trip round the ring must have been consumed.
    if (i >= Plan::kStages) bars.kv_empty[stage].wait((i / Plan::kStages - 1) & 1, "kv_empty", stage);
    const int col0 = (block.n_tiles - 1 - i) * Plan::kBlockN;
    bars.k_full[stage].arrive_expect_bytes(Plan::KVTile::kBytes);
    storage.k(stage).load(k_map, col0, kv_head, batch, bars.k_full[stage]);
    bars.v_full[stage].arrive_expect_bytes(Plan::KVTile::kBytes);
    storage.v(stage).load(v_map, col0, kv_head, batch, bars.v_full[stage]);
  }
}

// How many of the first columns of the key tile at col0 row i sees: those
// before the last key and, under causal masking, those up to column i
// (causally_hidden's rule), clamped to [0, kBlockN].
template <int kBlockN>
__device__ __forceinline__ int visible_columns(const AttentionParams& p, int64_t i, int64_t col0) {
  const int64_t end = p.causal ? smaller(p.kv_len, i + 1) : p.kv_len;
  return static_cast<int>(end - col0 < 0 ? 0 : smaller(end - col0, kBlockN));
}

// Scores of the key tile at col0 into the log2 domain, −inf where the key is
// past the end or causally hidden from the row. Only tiles that hold such a
// key for some row of the warp compare column by column.
template <int kSBlocks>
__device__ __forceinline__ void mask_scores(const AttentionParams& p, float (&s)[kSBlocks][4], float scale_log2,
                                            int64_t first_row, int64_t col0, bool needs_mask) {
  const int t = static_cast<int>(threadIdx.x) % 4;
#pragma unroll
  for (int row = 0; row < 2; ++row) {
    const int visible = needs_mask ? visible_columns<kSBlocks * 8>(p, first_row + row * 8, col0) : kSBlocks * 8;
#pragma unroll
    for (int j = 0; j < kSBlocks; ++j) {
#pragma unroll
      for (int e = 2 * row; e < 2 * row + 2; ++e) {
        const int col = 8 * j + 2 * t + (e & 1);
        s[j][e] = col < visible ? s[j][e] * scale_log2 : -INFINITY;
      }
    }
  }
}

// Normalises the thread's two rows of O and writes them with their
// logsumexp ((batch, Hq, L) float32, as the sm_80 kernels write it).
template <typename T, int kOBlocks>
__device__ __forceinline__ void store_rows(const AttentionParams& p, const QueryBlock& block, int64_t first_row,
                                           const float (&o)[kOBlocks][4], const OnlineSoftmax& softmax) {
  const int t = static_cast<int>(threadIdx.x) % 4;
  T* out = static_cast<T*>(p.out.data) + block.batch * p.out.stride.batch + block.head * p.out.stride.head;
#pragma unroll
  for (int row = 0; row < 2; ++row) {
    float factor, logsumexp;
    softmax.finish(row, factor, logsumexp);
    const int64_t i = first_row + row * 8;
    if (i >= p.q_len) continue;
    T* out_row = out + i * p.out.stride.row;
#pragma unroll
    for (int j = 0; j < kOBlocks; ++j) {
      *reinterpret_cast<uint32_t*>(out_row + 8 * j + 2 * t) =
          tc::pack_pair<T>(o[j][2 * row] * factor, o[j][2 * row + 1] * factor);
    }
    if (t == 0) static_cast<float*>(p.logsumexp)[p.row_index(block.batch, block.head, i)] = logsumexp;
  }
}

// A consumer warpgroup's loop: its 64 rows against every key tile.
template <typename T, typename Plan>
__device__ __forceinline__ void attend(const AttentionParams& p, const ForwardStorage<Plan>& storage,
                                       const QueryBlock& block, int consumer) {
  constexpr int kSBlocks = Plan::kBlockN / 8, kOBlocks = Plan::kDim / 8;
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32 % 4;
  const int q_row0 = consumer * Plan::kConsumerRows;  // the warpgroup's rows in the Q tile
  const int64_t warp_row0 = block.row0 + q_row0 + warp * 16;
  const int64_t first_row = warp_row0 + lane / 4;  // the thread's rows are this and the one 8 below
  const float scale_log2 = static_cast<float>(p.scale) * kLog2e;
  typename Plan::Barriers& bars = *storage.barriers;

  float o[kOBlocks][4] = {};
  OnlineSoftmax softmax;
  bars.q_full.wait(0, "q_full");
  for (int i = 0; i < block.n_tiles; ++i) {
    const int stage = i % Plan::kStages;
    const uint32_t trip = (i / Plan::kStages) & 1;
    const int64_t col0 = static_cast<int64_t>(block.n_tiles - 1 - i) * Plan::kBlockN;

    // S = Q·Kᵀ; the first k-step overwrites S, so S needs no zeroing.
    float s[kSBlocks][4];
    bars.k_full[stage].wait(trip, "k_full", stage);
    __syncwarp();  // wgmma is .aligned: the warp must arrive converged
    warpgroup_fence();
#pragma unroll
    for (int kk = 0; kk < Plan::kDim / 16; ++kk) {
      mma_shared_a<T, Plan::kBlockN>(s, storage.q().k_major(q_row0, kk * 16), storage.k(stage).k_major(0, kk * 16),
                                     kk > 0);
    }
    commit_products();
    wait_products<0>();
    hold(s);

    const bool needs_mask =
        col0 + Plan::kBlockN > p.kv_len || (p.causal && col0 + Plan::kBlockN - 1 > warp_row0);
    mask_scores(p, s, scale_log2, first_row, col0, needs_mask);
    softmax.update(s, o);
    uint32_t a[kSBlocks / 2][4];
    to_a_operand<T>(s, a);

    // O += P·V.
    bars.v_full[stage].wait(trip, "v_full", stage);
    __syncwarp();
    hold(o);
    hold(a);
    warpgroup_fence();
#pragma unroll
    for (int kk = 0; kk < Plan::kBlockN / 16; ++kk) {
      mma_register_a<T, Plan::kDim>(o, a[kk], storage.v(stage).mn_major(kk * 16));
    }
    commit_products();
    wait_products<0>();
    hold(o);
    hold(a);
    if (lane == 0) bars.kv_empty[stage].arrive();
  }
  store_rows<T>(p, block, first_row, o, softmax);
}

template <typename T, int kDim>
__global__ void __launch_bounds__(ForwardPlan<T, kDim>::kThreads, 1)
    hopper_forward_kernel(const AttentionParams p, const __grid_constant__ CUtensorMap q_map,
                          const __grid_constant__ CUtensorMap k_map, const __grid_constant__ CUtensorMap v_map) {
#if defined(SELFATTN_HOPPER_DEVICE_PASS)
  using Plan = ForwardPlan<T, kDim>;
  extern __shared__ unsigned char shared[];
  const uint32_t unaligned = shared_address(shared);
  const uint32_t base = (unaligned + kSwizzleAtomBytes - 1) / kSwizzleAtomBytes * kSwizzleAtomBytes;
  const ForwardStorage<Plan> storage{
      base, reinterpret_cast<typename Plan::Barriers*>(shared + (base - unaligned) + Plan::kBarrierOffset)};
  const QueryBlock block = query_block<Plan::kBlockM, Plan::kBlockN>(p);

  if (threadIdx.x == 0) {
    storage.barriers->init();
    fence_barrier_init();
  }
  __syncthreads();

  if (threadIdx.x < kWarpgroupThreads) {
    release_registers<Plan::kProducerRegisters>();
    if (threadIdx.x == 0) load_tiles(storage, block, q_map, k_map, v_map);
  } else {
    claim_registers<Plan::kConsumerRegisters>();
    attend<T>(p, storage, block, static_cast<int>(threadIdx.x) / kWarpgroupThreads - 1);
  }
#else
  __trap();  // never launched: the host checks the device and the build
#endif
}

}  // namespace selfattn::cuda::hopper
