#include "common/sequence_problem.h"

#include "common/dropout_index.h"
#include "common/sequences.h"

namespace selfattn {
namespace {

// The view moved to row `row` of batch b, head 0.
TensorView at_row(TensorView view, ElementType type, int64_t b, int64_t row, int64_t col = 0) {
  if (view.data != nullptr) {
    view.data = static_cast<char*>(view.data) + view.stride.offset(b, 0, row, col) * element_size(type);
  }
  return view;
}

// Bytes of the accumulator type, that of the per-row arrays and the slopes.
int64_t accumulator_bytes(const AttentionParams& p) {
  return element_size(p.dtype == ElementType::Float64 ? ElementType::Float64 : ElementType::Float32);
}

// A per-row array (logsumexp, delta, row_scale, grad_logsumexp) moved to row
// `row` of batch b.
const void* at_row(const void* rows, const AttentionParams& p, int64_t b, int64_t row) {
  return rows == nullptr ? nullptr
                         : static_cast<const char*>(rows) + p.row_index(b, 0, row) * accumulator_bytes(p);
}

void* at_row(void* rows, const AttentionParams& p, int64_t b, int64_t row) {
  return const_cast<void*>(at_row(static_cast<const void*>(rows), p, b, row));
}

}  // namespace

AttentionParams sequence_problem(const AttentionParams& p, int64_t s) {
  const Sequence seq = sequence(p, s);
  AttentionParams sub = p;
  sub.batch = 1;
  sub.q_len = seq.q_len;
  sub.kv_len = seq.kv_len;
  sub.q = at_row(p.q, p.dtype, seq.batch, seq.q_begin);
  sub.out = at_row(p.out, p.dtype, seq.batch, seq.q_begin);
  if (p.block_table != nullptr) {
    // The blocks are shared by all sequences; the table's row is the sequence's own.
    sub.block_table = p.block_table + seq.batch * p.block_table_stride;
  } else {
    sub.k = at_row(p.k, p.dtype, seq.batch, seq.k_begin);
    sub.v = at_row(p.v, p.dtype, seq.batch, seq.k_begin);
  }
  sub.mask = at_row(p.mask, p.mask_dtype, seq.batch, seq.q_begin, seq.k_begin);
  sub.logsumexp = at_row(p.logsumexp, p, seq.batch, seq.q_begin);
  if (p.alibi_slopes != nullptr) {
    sub.alibi_slopes = static_cast<const char*>(p.alibi_slopes) + s * p.alibi_batch_stride * accumulator_bytes(p);
  }
  sub.dropout.index_base = p.dropout.index_base + sequence_dropout_base(p, s);
  sub.cu_seqlens_q = sub.cu_seqlens_k = sub.seqused_k = nullptr;
  sub.sequences = 1;
  sub.max_seqlen_q = seq.q_len;
  sub.max_seqlen_k = seq.kv_len;
  return sub;
}

AttentionBackwardParams sequence_problem(const AttentionBackwardParams& bp, int64_t s) {
  const AttentionParams& p = bp.fwd;
  const Sequence seq = sequence(p, s);
  AttentionBackwardParams sub = bp;
  sub.fwd = sequence_problem(p, s);
  sub.grad_out = at_row(bp.grad_out, p.dtype, seq.batch, seq.q_begin);
  sub.grad_q = at_row(bp.grad_q, p.dtype, seq.batch, seq.q_begin);
  sub.grad_k = at_row(bp.grad_k, p.dtype, seq.batch, seq.k_begin);
  sub.grad_v = at_row(bp.grad_v, p.dtype, seq.batch, seq.k_begin);
  sub.delta = at_row(bp.delta, p, seq.batch, seq.q_begin);
  sub.row_scale = at_row(bp.row_scale, p, seq.batch, seq.q_begin);
  sub.grad_logsumexp = at_row(bp.grad_logsumexp, p, seq.batch, seq.q_begin);
  return sub;
}

}  // namespace selfattn
