// What the scalar kernels (attention_forward.cu, attention_backward.cu) share:
// strided rows read in the accumulator type, the score of one (query row,
// key row) pair, and the work layout.
//
// Work layout: a block of kThreads threads owns one row of a result (a query
// row for the output and dQ, a key row for dK and dV) and a piece of its
// columns, kColumnsPerThread per thread, kept in registers. A row wider than
// one piece is split over several blocks, each recomputing the scores it
// needs, so that any head dim fits without shared memory that grows with it.
// Blocks walk the work items with a grid-stride loop, so any number of items
// fits the grid.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common/dispatch_dtype.h"
#include "common/dropout_index.h"
#include "cuda/device/sequence_head.cuh"

namespace selfattn::cuda::scalar {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kColumnsPerThread = 4;
constexpr int64_t kPieceColumns = int64_t(kThreads) * kColumnsPerThread;
// More blocks than this only wait for a slot; the grid-stride loop takes the rest.
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

// Pieces that `columns` result columns are split into; at least one, so that
// a row with no columns still gets its block (for the logsumexp or the mask
// gradient).
SELFATTN_HOST_DEVICE int64_t column_pieces(int64_t columns) {
  return columns > kPieceColumns ? ceil_div(columns, kPieceColumns) : 1;
}

inline unsigned grid_size(int64_t items) { return static_cast<unsigned>(items < kMaxBlocks ? items : kMaxBlocks); }

// Work item `item` of a (sequences, heads, rows, pieces) space, outermost
// first. Rows run to the longest sequence's length; a sequence's own rows
// past its length are no work.
struct RowPiece {
  int64_t s, h, row, piece;
};

__device__ __forceinline__ RowPiece row_piece(int64_t item, int64_t heads, int64_t rows, int64_t pieces) {
  RowPiece w;
  w.piece = item % pieces;
  item /= pieces;
  w.row = item % rows;
  item /= rows;
  w.h = item % heads;
  w.s = item / heads;
  return w;
}

// Column c (0 ≤ c < kColumnsPerThread) of this thread in piece `piece`:
// consecutive threads take consecutive columns, so their loads coalesce
// where the column stride is 1.
__device__ __forceinline__ int64_t thread_column(int64_t piece, int c) {
  return piece * kPieceColumns + int64_t(c) * kThreads + threadIdx.x;
}

__device__ __forceinline__ float exponential(float x) { return expf(x); }
__device__ __forceinline__ double exponential(double x) { return exp(x); }
__device__ __forceinline__ float logarithm(float x) { return logf(x); }
__device__ __forceinline__ double logarithm(double x) { return log(x); }

// Combines x over the block; every thread gets the same result. Must be
// reached by all threads of the block. `partials` holds one value per warp.
template <typename acc_t, typename Combine>
__device__ acc_t block_reduce(acc_t x, Combine combine, acc_t* partials) {
  for (int lanes = 16; lanes > 0; lanes /= 2) x = combine(x, __shfl_xor_sync(0xffffffffu, x, lanes));
  if (threadIdx.x % 32 == 0) partials[threadIdx.x / 32] = x;
  __syncthreads();
  acc_t result = partials[0];
  for (int w = 1; w < kWarps; ++w) result = combine(result, partials[w]);
  __syncthreads();  // before the next reduction overwrites `partials`
  return result;
}

// Row r of head (b, h) of a strided tensor, read in the accumulator type.
template <typename scalar_t, typename acc_t>
struct Row {
  const scalar_t* data;
  int64_t stride;

  __device__ __forceinline__ acc_t operator[](int64_t c) const { return to_acc<scalar_t, acc_t>(data[c * stride]); }
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ Row<scalar_t, acc_t> row_of(const TensorView& t, int64_t b, int64_t h, int64_t r) {
  return {static_cast<const scalar_t*>(t.data) + t.stride.offset(b, h, r, 0), t.stride.col};
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t dot(Row<scalar_t, acc_t> x, Row<scalar_t, acc_t> y, int64_t n) {
  acc_t sum = 0;
  for (int64_t e = 0; e < n; ++e) sum += x[e] * y[e];
  return sum;
}

// The product of a chunk with a block of rows, once the chunk's weights are
// in shared memory: acc[c] += Σ_r weights[r − row0] · x[r][column c] over
// rows r of head (b, h) from row0 to row_end (at most kThreads of them), for
// this thread's columns of `piece` below `columns`.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void add_weighted_rows(acc_t (&acc)[kColumnsPerThread], const acc_t* weights,
                                                  const TensorView& x, int64_t b, int64_t h, int64_t row0,
                                                  int64_t row_end, int64_t columns, int64_t piece) {
  const int64_t rows = row_end - row0 < kThreads ? row_end - row0 : kThreads;
  for (int64_t r = 0; r < rows; ++r) {
    const Row<scalar_t, acc_t> row = row_of<scalar_t, acc_t>(x, b, h, row0 + r);
#pragma unroll
    for (int c = 0; c < kColumnsPerThread; ++c) {
      const int64_t col = thread_column(piece, c);
      if (col < columns) acc[c] += weights[r] * row[col];
    }
  }
}

// Writes factor·acc into this thread's columns of `piece` below `columns`,
// in row r of head (b, h).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void store_columns(const TensorView& t, int64_t b, int64_t h, int64_t r, int64_t columns,
                                              int64_t piece, const acc_t (&acc)[kColumnsPerThread], acc_t factor) {
  auto* row = static_cast<scalar_t*>(t.data) + t.stride.offset(b, h, r, 0);
#pragma unroll
  for (int c = 0; c < kColumnsPerThread; ++c) {
    const int64_t col = thread_column(piece, c);
    if (col < columns) row[col * t.stride.col] = from_acc<scalar_t, acc_t>(factor * acc[c]);
  }
}

// Score s_ij of a sequence head, every rule included (see masked_score). The
// forward and the backward both take it from here, so the backward's
// exp(s − lse) sees the very rounding of the forward's s.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t score(const AttentionParams& p, const SequenceHead<acc_t>& head, int64_t i,
                                       int64_t j, acc_t* cap_slope = nullptr) {
  const Row<scalar_t, acc_t> q = row_of<scalar_t, acc_t>(p.q, head.seq.batch, head.h, head.q_row(i));
  const Row<scalar_t, acc_t> k = row_of<scalar_t, acc_t>(p.k, head.seq.batch, head.h / p.group_size(), head.k_row(j));
  return masked_score<acc_t>(p, head, i, j, dot(q, k, p.head_dim), cap_slope);
}

// The dropout multiplier Z_ij: keep_scale where score (i, j) is kept, 0
// where it is dropped, 1 without dropout.
template <typename acc_t>
__device__ __forceinline__ acc_t dropout_multiplier(const Dropout& dropout, const AttentionParams& p,
                                                    const SequenceHead<acc_t>& head, int64_t i, int64_t j) {
  if (!dropout.enabled) return acc_t(1);
  const uint64_t index = dropout_index(p, head.s, head.h, head.seq.q_len, head.seq.kv_len, i, j);
  return dropout.keeps(index) ? static_cast<acc_t>(dropout.keep_scale) : acc_t(0);
}

// What the backward recomputes for score (b, h, i, j), from the forward's
// logsumexp. The backward kernels and compute_exact_delta both take it from
// here, so that D_i = Σ_j P_ij·dP_ij sums the very terms dS_ij = P_ij·(dP_ij − D_i)
// is built from, and every row of dS sums to zero.
template <typename acc_t>
struct BackwardTerms {
  acc_t prob;          // P_ij = exp(s_ij − lse_i)
  acc_t dropped_prob;  // P_ij·Z_ij, the weight of dO_i in dV_j
  acc_t grad_prob;     // dP_ij = Z_ij·(dO_i·v_j)
  acc_t cap_slope;     // d s_ij / d(scale·q_i·k_j): the softcap's 1 − tanh², else 1
};

template <typename scalar_t, typename acc_t>
__device__ BackwardTerms<acc_t> backward_terms(const AttentionBackwardParams& bp, const Dropout& dropout,
                                               const SequenceHead<acc_t>& head, int64_t i, int64_t j) {
  const AttentionParams& p = bp.fwd;
  const acc_t lse = static_cast<const acc_t*>(p.logsumexp)[row_index(p, head, i)];
  // A fully masked row has P = 0.
  if (lse == minus_infinity<acc_t>()) return {acc_t(0), acc_t(0), acc_t(0), acc_t(1)};
  acc_t cap_slope;
  const acc_t prob = exponential(score<scalar_t, acc_t>(p, head, i, j, &cap_slope) - lse);
  const acc_t z = dropout_multiplier<acc_t>(dropout, p, head, i, j);
  const Row<scalar_t, acc_t> grad_out = row_of<scalar_t, acc_t>(bp.grad_out, head.seq.batch, head.h, head.q_row(i));
  const Row<scalar_t, acc_t> v = row_of<scalar_t, acc_t>(p.v, head.seq.batch, head.h / p.group_size(), head.k_row(j));
  return {prob, prob * z, z * dot(grad_out, v, p.value_dim), cap_slope};
}

}  // namespace selfattn::cuda::scalar
