// The scalar backward: any dtype, any head dim, no tensor cores. Two kernels,
// so that every gradient element has exactly one writer (deterministic, no
// atomics but the mask gradient's):
//   - the query kernel: a block owns one query row of a sequence and writes
//     its dQ (and adds its dS into the mask gradient), streaming the keys
//     it sees past it, one key per thread;
//   - the key kernel: a block owns one key row of a key/value head of a
//     sequence and writes its dK and dV, streaming past it every query row
//     of every query head of the GQA group that sees it, one query row per
//     thread. Keys of a cache past what the sequence uses are left to the
//     caller, which zeroes them.
// Both recompute P from the forward's logsumexp and take D from bp.delta
// (compute_delta's rowsum(dO ∘ O), or compute_exact_delta's Σ_j P_ij·dP_ij).
#include "cuda/scalar/rows.cuh"

namespace selfattn::cuda {
namespace {

using namespace scalar;

template <typename acc_t>
struct ScoreGradient {
  acc_t dropped_prob;  // P_ij·Z_ij, the weight of dO_i in dV_j
  acc_t grad;          // dS_ij = P_ij·(dP_ij − D_i), the gradient of the score and of the mask
  acc_t grad_product;  // dS_ij through the softcap: the gradient of scale·q_i·k_j
};

template <typename scalar_t, typename acc_t>
__device__ ScoreGradient<acc_t> score_gradient(const AttentionBackwardParams& bp, const Dropout& dropout,
                                               const SequenceHead<acc_t>& head, int64_t i, int64_t j) {
  const BackwardTerms<acc_t> t = backward_terms<scalar_t, acc_t>(bp, dropout, head, i, j);
  const acc_t delta = static_cast<const acc_t*>(bp.delta)[row_index(bp.fwd, head, i)];
  const acc_t grad = t.prob * (t.grad_prob - delta);
  return {t.dropped_prob, grad, grad * t.cap_slope};
}

SELFATTN_HOST_DEVICE int64_t query_items(const AttentionParams& p) {
  return p.sequences * p.q_heads * p.max_seqlen_q * column_pieces(p.head_dim);
}

// Pieces cover dK's E columns and dV's Ev columns together.
SELFATTN_HOST_DEVICE int64_t key_pieces(const AttentionParams& p) {
  return column_pieces(p.head_dim > p.value_dim ? p.head_dim : p.value_dim);
}

SELFATTN_HOST_DEVICE int64_t key_items(const AttentionParams& p) {
  return p.sequences * p.kv_heads * p.max_seqlen_k * key_pieces(p);
}

// dQ_i = scale·Σ_j dS_ij k_j, and dS_ij into the mask gradient.
template <typename scalar_t, typename acc_t>
__global__ void query_kernel(const AttentionBackwardParams bp, const DropoutSeed seed, const BackwardBuffers buffers) {
  __shared__ acc_t grad_scores[kThreads];  // dS of the chunk's keys
  const AttentionParams& p = bp.fwd;
  const Dropout dropout = resolve_dropout(p, seed, false);
  const int64_t pieces = column_pieces(p.head_dim);
  const int64_t items = query_items(p);

  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const RowPiece w = row_piece(item, p.q_heads, p.max_seqlen_q, pieces);
    const SequenceHead<acc_t> head = sequence_head<acc_t>(p, sequence(p, w.s), w.s, w.h);
    if (w.row >= head.seq.q_len) continue;  // the whole block: w is the block's
    const int64_t kv_head = w.h / p.group_size();
    // Only the first piece adds to the mask gradient, so each dS is added once.
    const bool adds_mask_gradient = buffers.grad_mask_accum.data != nullptr && w.piece == 0;
    // The same for the whole block: the loop below syncs.
    const KeyRange keys = visible_keys(p, w.row, head.shift, head.seq.kv_len);
    acc_t grad_q[kColumnsPerThread] = {};

    for (int64_t j0 = keys.first; j0 < keys.end; j0 += kThreads) {
      const int64_t j = j0 + threadIdx.x;
      acc_t ds = 0;
      if (j < keys.end) {
        const ScoreGradient<acc_t> g = score_gradient<scalar_t, acc_t>(bp, dropout, head, w.row, j);
        // The mask is added after the softcap: its gradient is dS itself.
        if (adds_mask_gradient) {
          add_mask_gradient(buffers, head.seq.batch, w.h, head.q_row(w.row), head.k_row(j), g.grad);
        }
        ds = g.grad_product;
      }
      grad_scores[threadIdx.x] = ds;
      __syncthreads();

      add_weighted_rows<scalar_t>(grad_q, grad_scores, p.k, head.seq.batch, kv_head, head.k_row(j0),
                                  head.k_row(keys.end), p.head_dim, w.piece);
      __syncthreads();  // before the next chunk overwrites `grad_scores`
    }

    store_columns<scalar_t>(bp.grad_q, head.seq.batch, w.h, head.q_row(w.row), p.head_dim, w.piece, grad_q,
                            static_cast<acc_t>(p.scale));
  }
}

// dK_j = scale·Σ dS_ij q_i and dV_j = Σ P_ij Z_ij dO_i, over the rows i of
// every query head of the group.
template <typename scalar_t, typename acc_t>
__global__ void key_kernel(const AttentionBackwardParams bp, const DropoutSeed seed) {
  __shared__ acc_t dropped_probs[kThreads], grad_scores[kThreads];  // of the chunk's query rows
  const AttentionParams& p = bp.fwd;
  const Dropout dropout = resolve_dropout(p, seed, false);
  const int64_t pieces = key_pieces(p);
  const int64_t items = key_items(p);
  const int64_t group = p.group_size();

  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const RowPiece w = row_piece(item, p.kv_heads, p.max_seqlen_k, pieces);  // w.h: the kv head, w.row: the key j
    const Sequence seq = sequence(p, w.s);
    if (w.row >= seq.kv_len) continue;  // the whole block: w is the block's
    // The query rows that see key j: the same for every head of the sequence.
    const KeyRange rows = rows_seeing(p, w.row, diagonal_shift(p, seq.q_len, seq.kv_len), seq.q_len);
    acc_t grad_k[kColumnsPerThread] = {}, grad_v[kColumnsPerThread] = {};

    for (int64_t h = w.h * group; h < (w.h + 1) * group; ++h) {
      const SequenceHead<acc_t> head = sequence_head<acc_t>(p, seq, w.s, h);
      for (int64_t i0 = rows.first; i0 < rows.end; i0 += kThreads) {
        const int64_t i = i0 + threadIdx.x;
        ScoreGradient<acc_t> g{acc_t(0), acc_t(0), acc_t(0)};
        if (i < rows.end) g = score_gradient<scalar_t, acc_t>(bp, dropout, head, i, w.row);
        dropped_probs[threadIdx.x] = g.dropped_prob;
        grad_scores[threadIdx.x] = g.grad_product;
        __syncthreads();

        add_weighted_rows<scalar_t>(grad_k, grad_scores, p.q, seq.batch, h, head.q_row(i0), head.q_row(rows.end),
                                    p.head_dim, w.piece);
        add_weighted_rows<scalar_t>(grad_v, dropped_probs, bp.grad_out, seq.batch, h, head.q_row(i0),
                                    head.q_row(rows.end), p.value_dim, w.piece);
        __syncthreads();  // before the next chunk overwrites the shared arrays
      }
    }

    const int64_t key_row = seq.k_begin + w.row;
    store_columns<scalar_t>(bp.grad_k, seq.batch, w.h, key_row, p.head_dim, w.piece, grad_k,
                            static_cast<acc_t>(p.scale));
    store_columns<scalar_t>(bp.grad_v, seq.batch, w.h, key_row, p.value_dim, w.piece, grad_v, acc_t(1));
  }
}

}  // namespace

void scalar_backward(const AttentionBackwardParams& bp, const DropoutSeed& seed, const BackwardBuffers& buffers,
                     cudaStream_t stream) {
  dispatch_dtype<__half, __nv_bfloat16>(bp.fwd.dtype, [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    using acc_t = acc_type<scalar_t>;
    if (const int64_t items = query_items(bp.fwd); items > 0) {
      query_kernel<scalar_t, acc_t><<<grid_size(items), kThreads, 0, stream>>>(bp, seed, buffers);
      check_launch("scalar query_kernel");
    }
    if (const int64_t items = key_items(bp.fwd); items > 0) {
      key_kernel<scalar_t, acc_t><<<grid_size(items), kThreads, 0, stream>>>(bp, seed);
      check_launch("scalar key_kernel");
    }
  });
}

}  // namespace selfattn::cuda
