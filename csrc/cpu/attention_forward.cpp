// FlashAttention forward on the CPU: each task takes one tile of query rows of
// one head and streams the key/value tiles past it, keeping a running row max
// and row sum (the online softmax) so that no score matrix outlives its tile.
// Only the output and the per-row logsumexp are written. The two products
// come from forward_products.h; the element-wise work from vector_ops.h.
#include "cpu/dispatch_dtype.h"
#include "cpu/forward_products.h"
#include "cpu/kernels.h"
#include "cpu/online_softmax.h"
#include "common/sequence_problem.h"
#include "cpu/paged_decode.h"
#include "cpu/parallel_tasks.h"
#include "cpu/split_keys_forward.h"

namespace selfattn::cpu {
namespace {

// What a thread keeps from task to task.
template <typename acc_t, typename Products>
struct ForwardThread {
  ForwardWorkspace<acc_t> ws;
  Products products;

  explicit ForwardThread(const AttentionParams& p) : ws(p), products(p) {}
};

// Every batch of the tensors is one sequence of length q_len × kv_len.
template <typename scalar_t, typename acc_t, typename Products>
void forward_dense(const AttentionParams& p) {
  const int64_t tile_rows = query_tile_rows(p), q_tiles = ceil_div(p.q_len, tile_rows);
  parallel_tasks(
      p.batch * p.q_heads * q_tiles, [&] { return ForwardThread<acc_t, Products>(p); },
      [&](ForwardThread<acc_t, Products>& thread, int64_t task) {
        const int64_t head = task / q_tiles;
        const int64_t row0 = balanced_tile_order(p, task % q_tiles, q_tiles) * tile_rows;
        forward_query_tile<scalar_t>(p, head / p.q_heads, head % p.q_heads, row0,
                                     std::min(tile_rows, p.q_len - row0), thread.products, thread.ws);
      });
}

// Sequences of their own lengths: each task runs one tile of query rows of
// one sequence as a problem of its own (see sequence_problem.h).
template <typename scalar_t, typename acc_t, typename Products>
void forward_by_sequence(const AttentionParams& p) {
  const int64_t tile_rows = query_tile_rows(p), q_tiles = ceil_div(p.max_seqlen_q, tile_rows);
  parallel_tasks(
      p.sequences * p.q_heads * q_tiles, [&] { return ForwardWorkspace<acc_t>(p); },
      [&](ForwardWorkspace<acc_t>& ws, int64_t task) {
        const int64_t s = task / (p.q_heads * q_tiles), h = (task / q_tiles) % p.q_heads;
        const AttentionParams sequence = sequence_problem(p, s);
        const int64_t row0 = (task % q_tiles) * tile_rows;
        if (row0 >= sequence.q_len) return;
        Products products(sequence);
        forward_query_tile<scalar_t>(sequence, 0, h, row0, std::min(tile_rows, sequence.q_len - row0), products, ws);
      });
}

template <typename scalar_t, typename acc_t, typename Products>
void run_forward(const AttentionParams& p) {
  if (p.has_sequences()) return forward_by_sequence<scalar_t, acc_t, Products>(p);
  forward_dense<scalar_t, acc_t, Products>(p);
}

template <typename scalar_t, typename acc_t>
struct ForwardKernel {
  static void run(const AttentionParams& p) {
    if (paged_decode_applies(p)) return forward_paged_decode<scalar_t, acc_t>(p);
    if (use_split_keys(p)) return forward_split_keys<scalar_t, acc_t>(p);
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
      if (MatrixUnitProducts::applies(p)) return run_forward<scalar_t, acc_t, MatrixUnitProducts>(p);
    }
    run_forward<scalar_t, acc_t, FloatProducts<scalar_t, acc_t>>(p);
  }
};

}  // namespace

void attention_forward(const AttentionParams& params) {
  dispatch_cpu_dtype<ForwardKernel>(params, params.dtype);
}

}  // namespace selfattn::cpu
