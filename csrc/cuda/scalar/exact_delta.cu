// compute_exact_delta (see kernels.h): D_i = Σ_j P_ij·dP_ij summed from the
// very terms the scalar backward builds dS_ij = P_ij·(dP_ij − D_i) from, so
// that Σ_j dS_ij is zero up to float rounding, not up to the 16-bit rounding
// of the stored output O that rowsum(dO ∘ O) carries. O(L·S·(E+Ev)), so
// only calls that want the mask gradient pay for it.
#include "cuda/scalar/rows.cuh"

namespace selfattn::cuda {
namespace {

using namespace scalar;

SELFATTN_HOST_DEVICE int64_t delta_items(const AttentionParams& p) {
  return p.sequences * p.q_heads * p.max_seqlen_q;
}

// A block owns one query row of a sequence and streams the keys it sees, one per thread.
template <typename scalar_t, typename acc_t>
__global__ void exact_delta_kernel(const AttentionBackwardParams bp, const DropoutSeed seed) {
  __shared__ acc_t partials[kWarps];
  const AttentionParams& p = bp.fwd;
  const Dropout dropout = resolve_dropout(p, seed, false);
  const int64_t items = delta_items(p);

  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const RowPiece w = row_piece(item, p.q_heads, p.max_seqlen_q, 1);
    const SequenceHead<acc_t> head = sequence_head<acc_t>(p, sequence(p, w.s), w.s, w.h);
    if (w.row >= head.seq.q_len) continue;  // the whole block: w is the block's
    const KeyRange keys = visible_keys(p, w.row, head.shift, head.seq.kv_len);
    acc_t sum = 0;
    for (int64_t j = keys.first + threadIdx.x; j < keys.end; j += kThreads) {
      const BackwardTerms<acc_t> t = backward_terms<scalar_t, acc_t>(bp, dropout, head, w.row, j);
      sum += t.prob * t.grad_prob;
    }
    sum = block_reduce(sum, [](acc_t a, acc_t b) { return a + b; }, partials);
    if (threadIdx.x == 0) static_cast<acc_t*>(bp.delta)[row_index(p, head, w.row)] = sum;
  }
}

}  // namespace

void compute_exact_delta(const AttentionBackwardParams& bp, const DropoutSeed& seed, cudaStream_t stream) {
  const int64_t items = delta_items(bp.fwd);
  if (items == 0) return;
  dispatch_dtype<__half, __nv_bfloat16>(bp.fwd.dtype, [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    exact_delta_kernel<scalar_t, acc_type<scalar_t>><<<grid_size(items), kThreads, 0, stream>>>(bp, seed);
    check_launch("scalar exact_delta_kernel");
  });
}

}  // namespace selfattn::cuda
