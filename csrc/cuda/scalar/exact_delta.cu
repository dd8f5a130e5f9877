// compute_exact_delta (see kernels.h): D_i = Σ_j P_ij·dP_ij summed from the
// very terms the scalar backward builds dS_ij = P_ij·(dP_ij − D_i) from, so
// that Σ_j dS_ij is zero up to float rounding, not up to the 16-bit rounding
// of the stored output O that rowsum(dO ∘ O) carries. O(L·S·(E+Ev)), so
// only calls that want the mask gradient pay for it.
#include "cuda/scalar/rows.cuh"

namespace selfattn::cuda {
namespace {

using namespace scalar;

// A block owns one query row and streams its visible keys, one per thread.
template <typename scalar_t, typename acc_t>
__global__ void exact_delta_kernel(const AttentionBackwardParams bp, const DropoutSeed seed) {
  __shared__ acc_t partials[kWarps];
  const AttentionParams& p = bp.fwd;
  const Dropout dropout = resolve_dropout(p, seed, false);
  const int64_t rows = p.batch * p.q_heads * p.q_len;

  // `row` is row_index(p, w.b, w.h, w.row): the (batch, Hq, L) rows in order.
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const RowPiece w = row_piece(row, p.q_heads, p.q_len, 1);
    const int64_t visible = visible_keys(p, w.row);
    acc_t sum = 0;
    for (int64_t j = threadIdx.x; j < visible; j += kThreads) {
      const BackwardTerms<acc_t> t = backward_terms<scalar_t, acc_t>(bp, dropout, w.b, w.h, w.row, j);
      sum += t.prob * t.grad_prob;
    }
    sum = block_reduce(sum, [](acc_t a, acc_t b) { return a + b; }, partials);
    if (threadIdx.x == 0) static_cast<acc_t*>(bp.delta)[row] = sum;
  }
}

}  // namespace

void compute_exact_delta(const AttentionBackwardParams& bp, const DropoutSeed& seed, cudaStream_t stream) {
  const int64_t rows = bp.fwd.batch * bp.fwd.q_heads * bp.fwd.q_len;
  if (rows == 0) return;
  dispatch_dtype(bp.fwd.dtype, [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    exact_delta_kernel<scalar_t, acc_type<scalar_t>><<<grid_size(rows), kThreads, 0, stream>>>(bp, seed);
    check_launch("scalar exact_delta_kernel");
  });
}

}  // namespace selfattn::cuda
