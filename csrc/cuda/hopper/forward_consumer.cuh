// A consumer warpgroup of the Hopper forward: its 64 query rows against the
// block's key tiles, last first. The last tile's S and softmax open; then
// per tile n:
//
//   wait K[n]
//   wait for P·V[n+2] (issued one step before), release V[n+2],
//     rescale O, P[n+1] to 16 bits in registers
//   wait for the turn (ping-pong)
//   issue S = Q·K[n]ᵀ                  } two commit groups in flight
//   wait V[n+1]; issue O += P·V[n+1]    }
//   pass the turn
//   wait for S only (warpgroup_wait<1>: P·V[n+1] still runs); release K[n]
//   mask (only the tiles that need it), online softmax of S → P[n]
//
// so the softmax of tile n runs under P·V[n+1], and the other consumer's
// products fill the tensor cores while this one does its softmax. P goes
// from registers straight into P·V. The first tile's P·V closes.
#pragma once

#include "cuda/hopper/barrier_waits.cuh"
#include "cuda/hopper/convert_fragment.cuh"
#include "cuda/hopper/forward_block.cuh"
#include "cuda/hopper/forward_params.cuh"
#include "cuda/hopper/forward_softmax.cuh"
#include "cuda/hopper/pingpong.cuh"
#include "cuda/hopper/warpgroup_gemm.cuh"

namespace selfattn::cuda::hopper {

// What a consumer has when its key tiles are done.
template <typename Traits>
struct ConsumerResult {
  using Accumulator = decltype(partition_fragment_C(typename Traits::MmaPV{},
                                                    Shape<typename Traits::Rows, typename Traits::Dim>{}));
  Accumulator o;  // unnormalised output rows
  SoftmaxState softmax;
};

template <typename Traits>
__device__ __forceinline__ void attend(const ForwardParams<Traits>& params, const ForwardBlock& block,
                                       typename Traits::SharedStorage& shared, typename Traits::PipelineKV& pipeline_k,
                                       typename Traits::PipelineKV& pipeline_v, const PingPong& turn,
                                       ConsumerResult<Traits>& result) {
  using Element = typename Traits::Element;
  constexpr int kBlockN = Traits::kBlockN;
  const int thread = static_cast<int>(threadIdx.x % kWarpgroupThreads);
  const int consumer = turn.consumer;

  Tensor sQ = make_tensor(make_smem_ptr(shared.q.data()), typename Traits::SmemLayoutQ{})(_, _, consumer);
  Tensor sK = make_tensor(make_smem_ptr(shared.k.data()), typename Traits::SmemLayoutKV{});
  Tensor sVt = make_tensor(make_smem_ptr(shared.v.data()), typename Traits::SmemLayoutVt{});

  typename Traits::MmaQK mma_qk;
  typename Traits::MmaPV mma_pv;
  auto thread_qk = mma_qk.get_thread_slice(thread);
  auto thread_pv = mma_pv.get_thread_slice(thread);
  Tensor tSrQ = thread_qk.partition_fragment_A(sQ);   // descriptors
  Tensor tSrK = thread_qk.partition_fragment_B(sK);   // (mma, n, k, stage)
  Tensor tOrV = thread_pv.partition_fragment_B(sVt);  // (mma, dim, keys, stage)
  Tensor tSrS = partition_fragment_C(mma_qk, Shape<typename Traits::Rows, typename Traits::BlockN>{});
  // P as the A operand of P·V: wgmma's register-A layout for 16 keys is the
  // accumulator layout of the same 16 columns, so register r of S is
  // register r of P.
  Tensor tOrP = make_tensor<Element>(partition_shape_A(mma_pv, Shape<typename Traits::Rows, typename Traits::BlockN>{}));
  static_assert(decltype(size(tOrP))::value == decltype(size(tSrS))::value, "P is S, register for register");
  auto& tOrO = result.o;

  const auto to_p = [&] { convert_fragment(tSrS, tOrP); };

  // The thread's first row in the tensor (its second is 8 below).
  const int warp = thread / 32, lane = thread % 32;
  const int first_row = block.m_block * Traits::kBlockM + consumer * Traits::kConsumerRows + 16 * warp + lane / 4;
  const int consumer_row0 = block.m_block * Traits::kBlockM + consumer * Traits::kConsumerRows;
  // Tile n needs masking when it holds a key past the end or, under causal
  // masking, a key after one of the warpgroup's rows. Tiles run last first,
  // so once a tile needs none, no later one does.
  const auto needs_mask = [&](int n) {
    const int col_end = (n + 1) * kBlockN;
    return col_end > params.kv_len || (params.causal && col_end - 1 > consumer_row0);
  };
  const float c = params.scale_log2;

  cutlass::PipelineState<Traits::kStages> k_read, v_read;
  float rescale[2];

  // The last tile: S alone, then its softmax, always masked.
  int n = block.n_tiles - 1;
  wait_q(shared.q_full);
  wait_full(pipeline_k, k_read, "k_full");
  turn.wait_turn();
  issue_gemm<true>(mma_qk, tSrQ, tSrK(_, _, _, k_read.index()), tSrS);
  turn.pass_turn(n == 0);
  warpgroup_wait<0>();
  warpgroup_fence_operand(tSrS);
  pipeline_k.consumer_release(k_read);
  ++k_read;
  mask_scores(tSrS, first_row, n * kBlockN, params.kv_len, params.causal);
  online_softmax<true>(tSrS, result.softmax, c, rescale);
  clear(tOrO);

  // The tile before: wait for its P·V (issued with the current Q·Kᵀ, so it
  // ran under the softmax), release its V, rescale O, P to 16 bits. This
  // opens the next step, after the wait for K, in a basic block of its own:
  // at the end of a step, ptxas would hoist the wait for P·V above the
  // softmax (to reuse P's registers early), and the overlap would be lost.
  bool pv_in_flight = false;  // none yet after the last tile's Q·Kᵀ
  const auto finish_previous_tile = [&] {
    warpgroup_wait<0>();
    warpgroup_fence_operand(tOrO);
    if (pv_in_flight) {
      pipeline_v.consumer_release(v_read);
      ++v_read;
    }
    pv_in_flight = true;
    rescale_rows(tOrO, rescale);
    to_p();
  };
  const auto step = [&](auto masked) {
    --n;
    wait_full(pipeline_k, k_read, "k_full");
    finish_previous_tile();
    turn.wait_turn();
    issue_gemm<true>(mma_qk, tSrQ, tSrK(_, _, _, k_read.index()), tSrS);
    wait_full(pipeline_v, v_read, "v_full");
    issue_gemm<false>(mma_pv, tOrP, tOrV(_, _, _, v_read.index()), tOrO);
    turn.pass_turn(n == 0);
    warpgroup_wait<1>();  // S is done; P·V may still run
    warpgroup_fence_operand(tSrS);
    pipeline_k.consumer_release(k_read);
    ++k_read;
    if constexpr (decltype(masked)::value) mask_scores(tSrS, first_row, n * kBlockN, params.kv_len, params.causal);
    online_softmax<decltype(masked)::value>(tSrS, result.softmax, c, rescale);
  };
  while (n > 0 && needs_mask(n - 1)) step(cute::true_type{});
  while (n > 0) step(cute::false_type{});

  // The first tile's P·V.
  finish_previous_tile();
  wait_full(pipeline_v, v_read, "v_full");
  issue_gemm<false>(mma_pv, tOrP, tOrV(_, _, _, v_read.index()), tOrO);
  warpgroup_wait<0>();
  warpgroup_fence_operand(tOrO);
  pipeline_v.consumer_release(v_read);
}

}  // namespace selfattn::cuda::hopper
