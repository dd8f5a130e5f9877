#include "api/double_backward/backward_derivative.h"

#include <ATen/FunctionalTensorWrapper.h>
#include <torch/autograd.h>

#include <algorithm>
#include <vector>

#include "api/core/kernel_params.h"
#include "api/core/op_outputs.h"
#include "api/double_backward/recomputed_gradients.h"
#include "api/double_backward/score_constants.h"
#include "common/score_rules.h"
#include "common/sequences.h"
#include "common/sequence_problem.h"

namespace selfattn {
namespace {

// Scores per block: 2 MiB per score-sized tensor in float64, of which the
// recompute and its graph hold about a dozen.
constexpr int64_t kBlockScores = int64_t(1) << 18;

// A size-1 dim is one to broadcast (the mask's), or one whose only index
// every block shares.
at::Tensor narrow_unless_broadcast(const at::Tensor& t, int64_t dim, int64_t start, int64_t length) {
  return t.size(dim) == 1 ? t : t.narrow(dim, start, length);
}

// The part of a tensor shaped like `input` (or like its gradient) that a
// block covers; `span` is the block's place in the call's tensors. The
// gradient of the logsumexp, (batch, Hq, L), is cut as query's rows.
at::Tensor block_of(const at::Tensor& t, BackwardInput input, const ScoreBlock& span) {
  const at::Tensor batches = narrow_unless_broadcast(t, 0, span.batch0, span.batches);
  if (input == kKey || input == kValue) return narrow_unless_broadcast(batches, 2, span.key0, span.keys);
  const at::Tensor rows = narrow_unless_broadcast(batches, 2, span.row0, span.rows);
  return input == kAttnMask ? narrow_unless_broadcast(rows, 3, span.key0, span.keys) : rows;
}

// The first-order outputs, and the inputs whose shapes they have.
constexpr std::array<BackwardInput, 4> kShapeOfGradient = {kQuery, kKey, kValue, kAttnMask};

// Each sequence of a packed batch or a KV cache is a problem of its own, as
// in the kernels (common/sequence_problem.h); otherwise the whole call is one.
struct Problem {
  AttentionParams params;
  int64_t batch0, q_begin, k_begin;  // where it starts in the tensors

  // Where a block of the problem lies in the call's tensors.
  ScoreBlock span(ScoreBlock block) const {
    block.batch0 += batch0;
    block.row0 += q_begin;
    block.key0 += k_begin;
    return block;
  }
};

std::vector<Problem> problems(const AttentionParams& p) {
  if (!p.has_sequences()) return {Problem{p, 0, 0, 0}};
  std::vector<Problem> result;
  for (int64_t s = 0; s < p.sequences; ++s) {
    const Sequence seq = sequence(p, s);
    result.push_back(Problem{sequence_problem(p, s), seq.batch, seq.q_begin, seq.k_begin});
  }
  return result;
}

// Calls visit(block) for the blocks of a problem: runs of query rows of
// every head (whole batches at a time when they are short), against the keys
// that some row of the run sees (score_rules.h), so that causal masks and
// windows cut the work as they do in the kernels.
template <typename Visit>
void for_each_block(const AttentionParams& p, Visit&& visit) {
  if (p.q_len == 0 || p.kv_len == 0 || p.q_heads == 0) return;  // no scores: no gradient
  const int64_t row_scores = p.q_heads * p.kv_len;
  const int64_t rows = std::clamp<int64_t>(kBlockScores / row_scores, 1, p.q_len);
  const int64_t batches = rows < p.q_len ? 1 : std::clamp<int64_t>(kBlockScores / (row_scores * p.q_len), 1, p.batch);
  const int64_t shift = diagonal_shift(p, p.q_len, p.kv_len);
  for (int64_t b = 0; b < p.batch; b += batches) {
    for (int64_t r = 0; r < p.q_len; r += rows) {
      const int64_t last = std::min(r + rows, p.q_len) - 1;
      // Both ends of the visible range only move right from row to row.
      const int64_t first_key = visible_keys(p, r, shift, p.kv_len).first;
      const int64_t end_key = visible_keys(p, last, shift, p.kv_len).end;
      if (end_key <= first_key) continue;  // no row sees a key: no gradient
      visit(ScoreBlock{b, std::min(batches, p.batch - b), r, last + 1 - r, first_key, end_key - first_key});
    }
  }
}

// Fake, meta and functional tensors: what tracing (torch.compile, export)
// passes, whose values cannot be read.
bool without_values(const at::Tensor& t) {
  return t.is_meta() || t.unsafeGetTensorImpl()->is_python_dispatch() ||
         at::functionalization::impl::isFunctionalTensor(t);
}

// The tensors of `all` whose gradients are taken, in order.
std::vector<at::Tensor> differentiated(const BackwardInputs& all, const std::array<bool, kBackwardInputs>& which) {
  std::vector<at::Tensor> result;
  for (int i = 0; i < kBackwardInputs; ++i) {
    if (which[i]) result.push_back(all[i]);
  }
  return result;
}

// The first-order gradients that a block contributes, recomputed from its
// part of the inputs, with the block's part of the gradients they get.
struct BlockTerms {
  std::vector<at::Tensor> outputs, grads;
};

BlockTerms block_terms(const Problem& problem, const ScoreBlock& block, const BackwardInputs& inputs,
                       const std::array<at::Tensor, 4>& grad_grads, const CallSettings& s,
                       const at::TensorOptions& acc) {
  const at::Tensor& mask = inputs[kAttnMask];
  const BlockGradients g = recompute_gradients(
      BlockInputs{inputs[kGradOutput], inputs[kQuery], inputs[kKey], inputs[kValue],
                  mask.defined() ? std::optional(mask) : std::nullopt, inputs[kGradLogsumexp]},
      block_constants(problem.params, block, acc), s.scale, s.options.softcap);
  const std::array<at::Tensor, 4> first_order = {g.grad_query, g.grad_key, g.grad_value, g.grad_attn_mask};
  BlockTerms terms;
  for (size_t j = 0; j < first_order.size(); ++j) {
    if (!grad_grads[j].defined() || !first_order[j].defined() || !first_order[j].requires_grad()) continue;
    terms.outputs.push_back(first_order[j]);
    terms.grads.push_back(block_of(grad_grads[j], kShapeOfGradient[j], problem.span(block)));
  }
  return terms;
}

// The options with their tensors in host memory, where the score rules read them.
AttentionOptions on_host(AttentionOptions o) {
  for (std::optional<at::Tensor>* t : {&o.alibi_slopes, &o.cu_seqlens_q, &o.cu_seqlens_k, &o.seqused_k}) {
    if (t->has_value()) *t = (*t)->cpu();
  }
  return o;
}

}  // namespace

BackwardInputs attention_backward_derivative(const BackwardCall& call, const std::array<at::Tensor, 4>& grad_grads,
                                             const std::array<bool, kBackwardInputs>& wanted, bool create_graph) {
  // The score rules read the call's values on the host (the dropout seed,
  // the sequences' offsets), so the derivative runs eagerly only.
  TORCH_CHECK_NOT_IMPLEMENTED(!without_values(call.query) && !without_values(call.rng_state),
                              "attention_backward: its derivative (double backward) runs eagerly; it cannot be "
                              "traced by torch.compile or export, nor run on fake or meta tensors");
  const CallSettings& s = call.settings;
  TORCH_CHECK_NOT_IMPLEMENTED(!s.options.block_table.has_value(),
                              "attention_backward: its derivative (double backward) is not implemented for a paged "
                              "cache (block_table)");
  // The parameters of the call as the kernels saw them, for the score rules.
  const AttentionOptions options = kernel_options(on_host(s.options), call.query.scalar_type());
  // The score rules read shapes and settings only, never the tensors'
  // values: one-element stand-ins of their shapes, since torch.func's wrapped
  // tensors have no storage to point at.
  auto shape_only = [](const at::Tensor& t) {
    const OutsideFunctorch plain;
    return at::zeros({}, t.options().device(at::kCPU)).expand(t.sizes());
  };
  AttentionParams params = make_params(shape_only(call.query), shape_only(call.key), shape_only(call.value),
                                       std::nullopt, shape_only(call.output), shape_only(call.logsumexp), s.dropout_p,
                                       s.is_causal, s.scale, options);
  if (params.dropout.enabled()) read_dropout_state(call.rng_state.cpu(), params.dropout);
  const at::TensorOptions acc = call.query.options().dtype(accumulator_type(call.query.scalar_type()));

  // The recompute builds a graph even when this backward itself is not
  // recorded (no create_graph). Then its inputs are leaves of its own, so
  // that each block's graph ends there and is freed block by block.
  at::AutoGradMode grad_mode(true);
  BackwardInputs base = {call.grad_output, call.query, call.key, call.value, call.attn_mask.value_or(at::Tensor()),
                         call.grad_logsumexp.value_or(at::Tensor())};
  std::array<bool, kBackwardInputs> differentiate{};
  BackwardInputs result;
  for (int i = 0; i < kBackwardInputs; ++i) {
    differentiate[i] = wanted[i] && base[i].defined();
    if (!base[i].defined()) continue;
    if (create_graph) {
      // Aliases of their own in the graph, so that each input's gradient is
      // its partial derivative: differentiated as they are, an input reached
      // through another's graph (grad_output computed from q) would get that
      // path twice, here and through the other's gradient.
      base[i] = base[i].view_as(base[i]);
      continue;
    }
    base[i] = base[i].detach().requires_grad_(differentiate[i]);
    if (differentiate[i]) result[i] = at::zeros_like(base[i]);
  }

  BlockTerms kept;  // every block's, with create_graph
  for (const Problem& problem : problems(params)) {
    for_each_block(problem.params, [&](const ScoreBlock& block) {
      const ScoreBlock span = problem.span(block);
      BackwardInputs inputs;
      for (int i = 0; i < kBackwardInputs; ++i) {
        if (base[i].defined()) inputs[i] = block_of(base[i], BackwardInput(i), span);
      }
      BlockTerms terms = block_terms(problem, block, inputs, grad_grads, s, acc);
      if (create_graph) {
        kept.outputs.insert(kept.outputs.end(), terms.outputs.begin(), terms.outputs.end());
        kept.grads.insert(kept.grads.end(), terms.grads.begin(), terms.grads.end());
        return;
      }
      const std::vector<at::Tensor> leaves = differentiated(inputs, differentiate);
      if (terms.outputs.empty() || leaves.empty()) return;
      const auto grads = torch::autograd::grad(terms.outputs, leaves, terms.grads, /*retain_graph=*/false,
                                               /*create_graph=*/false, /*allow_unused=*/true);
      for (int i = 0, n = 0; i < kBackwardInputs; ++i) {
        if (!differentiate[i]) continue;
        const at::Tensor& grad = grads[n++];
        if (grad.defined()) block_of(result[i], BackwardInput(i), span).add_(grad);
      }
    });
  }
  const std::vector<at::Tensor> inputs = differentiated(base, differentiate);
  if (create_graph && !kept.outputs.empty() && !inputs.empty()) {
    const auto grads = torch::autograd::grad(kept.outputs, inputs, kept.grads, /*retain_graph=*/true,
                                             /*create_graph=*/true, /*allow_unused=*/true);
    for (int i = 0, n = 0; i < kBackwardInputs; ++i) {
      if (differentiate[i]) result[i] = grads[n++];
    }
  }
  return result;
}

}  // namespace selfattn
