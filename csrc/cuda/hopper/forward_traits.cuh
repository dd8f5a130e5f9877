// Compile-time shape of the Hopper forward for one element type and head
// dim, in CuTe's terms: tile sizes, the shared-memory layouts the copy engine
// (TMA) writes and wgmma reads, the two products, the copies, the pipelines,
// and the block's shared storage. Everything the kernel's parts agree on is
// here, so that a layout cannot differ between the copy that fills a tile and
// the product that reads it.
//
// A block owns 128 query rows of one (batch, head) and has three warpgroups:
// a producer and two consumers of 64 rows each (wgmma's M). Q is kept as two
// 64-row halves, one per consumer, so that each consumer's output can go out
// through its own half of Q's shared memory once its last Q·Kᵀ is done.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

namespace selfattn::cuda::hopper {

using namespace cute;

constexpr int kWarpgroupThreads = 128;
constexpr int kConsumers = 2;

// Keys per tile for each head dim. At head dim 256 the output alone takes
// 128 of a consumer thread's 240 registers. With 80 keys (FlashAttention-3's
// choice, which also needs CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED for a
// 64×80 wgmma) nvcc 13.0 spills: 8 bytes in the consumers (a block index
// kept for the epilogue), or, with the block recomputed there, 4 bytes in
// the 24-register producer. So the tile is 64 keys there.
constexpr int block_n_for(int dim) { return dim == 256 ? 64 : 128; }

template <typename Element_, int kDim_>
struct ForwardTraits {
  using Element = Element_;  // cutlass::half_t or cutlass::bfloat16_t
  static constexpr int kDim = kDim_;
  static_assert(kDim == 64 || kDim == 128 || kDim == 256, "compiled head dims");
  static constexpr int kConsumerRows = 64;
  static constexpr int kBlockM = kConsumers * kConsumerRows;
  static constexpr int kBlockN = block_n_for(kDim);
  static constexpr int kStages = 2;
  static constexpr int kThreads = (1 + kConsumers) * kWarpgroupThreads;

  // setmaxnreg: the producer only issues copies; the consumers hold S, P and
  // O. What the consumers claim must come from what the producer gives back
  // of the block's launch allocation (__launch_bounds__(kThreads, 1): the
  // 64K registers over the threads, rounded down to a multiple of 8, 168
  // each): a split past it leaves the consumers' setmaxnreg.inc waiting for
  // registers that never come.
  static constexpr int kProducerRegisters = 24;
  static constexpr int kConsumerRegisters = 240;
  static constexpr int kLaunchRegisters = 65536 / kThreads / 8 * 8;
  static_assert((kProducerRegisters + kConsumers * kConsumerRegisters) * kWarpgroupThreads <=
                    kLaunchRegisters * kThreads,
                "the register split exceeds the block's launch allocation");

  using Dim = Int<kDim>;
  using BlockN = Int<kBlockN>;
  using Rows = Int<kConsumerRows>;

  // Shared tiles: rows of kDim elements, 128-byte swizzled in 64-column
  // panels, the layout both TMA and wgmma's K-major operands use.
  using SwizzleAtom = decltype(GMMA::Layout_K_SW128_Atom<Element>{});
  using SmemLayoutQHalf = decltype(tile_to_shape(SwizzleAtom{}, Shape<Rows, Dim>{}));
  using SmemLayoutQ = decltype(tile_to_shape(SwizzleAtom{}, Shape<Rows, Dim, Int<kConsumers>>{}));
  using SmemLayoutKV = decltype(tile_to_shape(SwizzleAtom{}, Shape<BlockN, Dim, Int<kStages>>{}));
  // V read as P·V's B operand: (kDim, keys) with kDim contiguous, i.e. the
  // same bytes seen transposed (MN-major for wgmma).
  using SmemLayoutVt = decltype(composition(
      SmemLayoutKV{}, make_ordered_layout(Shape<Dim, BlockN, Int<kStages>>{}, Step<_2, _1, _3>{})));

  // S = Q·Kᵀ, both from shared memory; O += P·V with P in registers.
  using MmaQK = decltype(make_tiled_mma(GMMA::ss_op_selector<Element, Element, float, Shape<Rows, BlockN, Dim>>()));
  using MmaPV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, float, Shape<Rows, Dim, BlockN>, GMMA::Major::K, GMMA::Major::MN>()));

  // Global tensors as the copy engine sees them: (rows, dim, heads, batch),
  // 32-bit extents, 64-bit strides, unit stride along dim.
  using GmemShape = Shape<int32_t, int32_t, int32_t, int32_t>;
  using GmemStride = Stride<int64_t, _1, int64_t, int64_t>;
  using GmemLayout = Layout<GmemShape, GmemStride>;
  static constexpr auto gmem_tensor(const Element* data, GmemLayout layout) {
    return make_tensor(make_gmem_ptr(data), layout);
  }
  using TmaLoadQ = decltype(make_tma_copy(SM90_TMA_LOAD{}, gmem_tensor(nullptr, GmemLayout{}), SmemLayoutQHalf{},
                                          Shape<Rows, Dim>{}, _1{}));
  using TmaLoadKV = decltype(make_tma_copy(SM90_TMA_LOAD{}, gmem_tensor(nullptr, GmemLayout{}),
                                           take<0, 2>(SmemLayoutKV{}), Shape<BlockN, Dim>{}, _1{}));
  using TmaStoreO = decltype(make_tma_copy(SM90_TMA_STORE{}, gmem_tensor(nullptr, GmemLayout{}),
                                           SmemLayoutQHalf{}, Shape<Rows, Dim>{}, _1{}));

  // Bytes each mbarrier phase expects: a whole tile. The copy engine moves a
  // tile as kDim / 64 boxes of one 128-byte swizzle panel each; the barrier
  // completes only if the announced count equals what the boxes deliver, so
  // a mismatch would hang, not miscompute. Checked against CuTe's box.
  static constexpr uint32_t kQBytes = kConsumers * kConsumerRows * kDim * sizeof(Element);
  static constexpr uint32_t kKVBytes = kBlockN * kDim * sizeof(Element);
  static constexpr int kPanels = kDim / 64;
  static constexpr int kQBoxBits = decltype(size<1>(typename TmaLoadQ::SrcLayout{}))::value;
  static constexpr int kKVBoxBits = decltype(size<1>(typename TmaLoadKV::SrcLayout{}))::value;
  static_assert(kQBoxBits / 8 == kConsumerRows * 128, "a Q box is one 128-byte panel of a consumer's rows");
  static_assert(kKVBoxBits / 8 == kBlockN * 128, "a K/V box is one 128-byte panel of a key tile");
  static_assert(kQBytes == kConsumers * kPanels * kQBoxBits / 8, "Q's expect-tx bytes equal its boxes' bytes");
  static_assert(kKVBytes == kPanels * kKVBoxBits / 8, "K's and V's expect-tx bytes equal their boxes' bytes");

  using PipelineKV = cutlass::PipelineTmaAsync<kStages>;

  struct SharedStorage {
    // Q, then the output through the same bytes (each consumer its half).
    alignas(1024) array_aligned<Element, cosize_v<SmemLayoutQ>> q;
    alignas(1024) array_aligned<Element, cosize_v<SmemLayoutKV>> k;
    alignas(1024) array_aligned<Element, cosize_v<SmemLayoutKV>> v;
    // K and V have their own barriers: K's stage is released right after
    // Q·Kᵀ, V's only after P·V, so the next K can land during P·V.
    typename PipelineKV::SharedStorage pipeline_k;
    typename PipelineKV::SharedStorage pipeline_v;
    cutlass::arch::ClusterTransactionBarrier q_full;
  };
  // The dynamic allocation is aligned by hand to the 1024 bytes of a
  // swizzle pattern (see the kernel).
  static constexpr int kSharedBytes = static_cast<int>(sizeof(SharedStorage)) + 1024;
  static_assert(kSharedBytes <= 227 * 1024, "exceeds the shared memory a block may have on sm_90");
};

}  // namespace selfattn::cuda::hopper
