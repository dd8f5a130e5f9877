// The scalar forward: any dtype, any head dim, no tensor cores. A block owns
// one query row of a sequence (and a piece of its output columns, see
// rows.cuh) and streams the keys it may see past it in chunks of kThreads,
// one key per thread, keeping the running row max and row sum of the online
// softmax.
#include "cuda/scalar/rows.cuh"

namespace selfattn::cuda {
namespace {

using namespace scalar;

SELFATTN_HOST_DEVICE int64_t forward_items(const AttentionParams& p) {
  return p.sequences * p.q_heads * p.max_seqlen_q * column_pieces(p.value_dim);
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const AttentionParams p, const DropoutSeed seed) {
  // The chunk's probabilities as they multiply V (dropout applied).
  __shared__ acc_t weights[kThreads];
  __shared__ acc_t partials[kWarps];
  const auto maximum = [](acc_t a, acc_t b) { return nan_propagating_max(a, b); };
  const auto plus = [](acc_t a, acc_t b) { return a + b; };
  const Dropout dropout = resolve_dropout(p, seed, blockIdx.x == 0 && threadIdx.x == 0);
  const int64_t pieces = column_pieces(p.value_dim);
  const int64_t items = forward_items(p);

  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const RowPiece w = row_piece(item, p.q_heads, p.max_seqlen_q, pieces);
    const SequenceHead<acc_t> head = sequence_head<acc_t>(p, sequence(p, w.s), w.s, w.h);
    if (w.row >= head.seq.q_len) continue;  // the whole block: w is the block's
    const int64_t kv_head = w.h / p.group_size();
    // The same for the whole block: the loop below syncs.
    const KeyRange keys = visible_keys(p, w.row, head.shift, head.seq.kv_len);
    acc_t row_max = minus_infinity<acc_t>(), row_sum = 0;
    acc_t out[kColumnsPerThread] = {};

    for (int64_t j0 = keys.first; j0 < keys.end; j0 += kThreads) {
      const int64_t j = j0 + threadIdx.x;
      const bool visible = j < keys.end;
      const acc_t s = visible ? score<scalar_t, acc_t>(p, head, w.row, j) : minus_infinity<acc_t>();
      const acc_t new_max = nan_propagating_max(row_max, block_reduce(s, maximum, partials));
      // While every key so far is masked out nothing accumulates, and
      // exp(−inf − (−inf)) would be NaN.
      const bool any_visible = new_max != minus_infinity<acc_t>();
      const acc_t prob = any_visible ? exponential(s - new_max) : acc_t(0);
      const acc_t rescale = any_visible ? exponential(row_max - new_max) : acc_t(1);
      // The row sum takes every probability: dropout acts only on what multiplies V.
      row_sum = row_sum * rescale + block_reduce(prob, plus, partials);
      row_max = new_max;
      weights[threadIdx.x] = visible ? prob * dropout_multiplier<acc_t>(dropout, p, head, w.row, j) : acc_t(0);
      __syncthreads();

#pragma unroll
      for (int c = 0; c < kColumnsPerThread; ++c) out[c] *= rescale;
      add_weighted_rows<scalar_t>(out, weights, p.v, head.seq.batch, kv_head, head.k_row(j0), head.k_row(keys.end),
                                  p.value_dim, w.piece);
      __syncthreads();  // before the next chunk overwrites `weights`
    }

    // A fully masked row (or S = 0) gives output 0 and logsumexp −inf, as
    // PyTorch's safe softmax.
    const bool masked = row_max == minus_infinity<acc_t>();
    const acc_t inverse_sum = masked ? acc_t(0) : acc_t(1) / row_sum;
    store_columns<scalar_t>(p.out, head.seq.batch, w.h, head.q_row(w.row), p.value_dim, w.piece, out, inverse_sum);
    if (w.piece == 0 && threadIdx.x == 0) {
      static_cast<acc_t*>(p.logsumexp)[row_index(p, head, w.row)] =
          masked ? minus_infinity<acc_t>() : row_max + logarithm(row_sum);
    }
  }
}

}  // namespace

void scalar_forward(const AttentionParams& p, const DropoutSeed& seed, cudaStream_t stream) {
  const int64_t items = forward_items(p);
  if (items == 0) return;
  dispatch_dtype<__half, __nv_bfloat16>(p.dtype, [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    forward_kernel<scalar_t, acc_type<scalar_t>><<<grid_size(items), kThreads, 0, stream>>>(p, seed);
    check_launch("scalar forward_kernel");
  });
}

}  // namespace selfattn::cuda
