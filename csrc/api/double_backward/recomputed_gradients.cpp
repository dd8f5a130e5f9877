#include "api/double_backward/recomputed_gradients.h"

#include <ATen/ATen.h>

#include <limits>

#include "api/core/op_outputs.h"

namespace selfattn {
namespace {

// softmax over the keys. A row that sees no key gets probabilities 0, as
// the kernels give it, and no NaN in any derivative.
at::Tensor probabilities(const at::Tensor& scores) {
  // Softmax does not depend on the shift, so the row max is a constant.
  at::Tensor row_max = scores.detach().amax(-1, /*keepdim=*/true);
  row_max = row_max.masked_fill(row_max == -std::numeric_limits<double>::infinity(), 0.0);
  const at::Tensor weights = at::exp(scores - row_max);
  const at::Tensor total = weights.sum(-1, /*keepdim=*/true);
  return weights / total.masked_fill(total == 0.0, 1.0);
}

}  // namespace

BlockGradients recompute_gradients(const BlockInputs& in, const BlockConstants& c, double scale, double softcap) {
  const at::ScalarType acc = accumulator_type(in.query.scalar_type());
  const at::Tensor q = in.query.to(acc), k = in.key.to(acc), v = in.value.to(acc), grad_out = in.grad_output.to(acc);
  const int64_t batches = q.size(0), q_heads = q.size(1), rows = q.size(2), kv_heads = k.size(1);
  // (n, Hq, rows, d) as (n, H, G·rows, d): the rows of the G query heads
  // that read one key/value head, so that K and V are never repeated.
  auto by_kv_head = [&](const at::Tensor& t) { return t.reshape({batches, kv_heads, -1, t.size(-1)}); };
  auto by_q_head = [&](const at::Tensor& t) { return t.reshape({batches, q_heads, rows, t.size(-1)}); };

  // The scale goes on Q, the smaller operand.
  const at::Tensor scaled_q = by_kv_head(q * scale);
  const at::Tensor product = by_q_head(at::matmul(scaled_q, k.transpose(-2, -1)));
  at::Tensor capped, scores = product;
  if (softcap > 0.0) {
    capped = at::tanh(product / softcap);
    scores = capped * softcap;
  }
  if (c.bias.defined()) scores = scores + c.bias;
  if (in.attn_mask.has_value()) {
    const at::Tensor& mask = *in.attn_mask;
    scores = mask.scalar_type() == at::kBool
                 ? scores.masked_fill(mask.logical_not(), -std::numeric_limits<double>::infinity())
                 : scores + mask.to(acc);
  }
  const at::Tensor probs = probabilities(scores);

  at::Tensor grad_probs = by_q_head(at::matmul(by_kv_head(grad_out), v.transpose(-2, -1)));
  at::Tensor dropped = probs;
  if (c.keep.defined()) {
    grad_probs = grad_probs * c.keep;
    dropped = probs * c.keep;
  }
  const at::Tensor grad_value = at::matmul(by_kv_head(dropped).transpose(-2, -1), by_kv_head(grad_out));
  at::Tensor delta = (probs * grad_probs).sum(-1, /*keepdim=*/true);
  // d lse / dS = P: the logsumexp's gradient adds P·dlse to dS.
  if (in.grad_logsumexp.defined()) delta = delta - in.grad_logsumexp.to(acc).unsqueeze(-1);
  at::Tensor grad_scores = probs * (grad_probs - delta);

  BlockGradients g;
  if (in.attn_mask.has_value() && in.attn_mask->is_floating_point()) {
    // The mask is added after the softcap: its gradient is that of the scores.
    g.grad_attn_mask = grad_scores.sum_to_size(in.attn_mask->sizes()).to(in.attn_mask->scalar_type());
  }
  if (softcap > 0.0) grad_scores = grad_scores * (1.0 - capped.square());
  const at::Tensor grouped_grad_scores = by_kv_head(grad_scores);
  g.grad_query = (by_q_head(at::matmul(grouped_grad_scores, k)) * scale).to(in.query.scalar_type());
  g.grad_key = at::matmul(grouped_grad_scores.transpose(-2, -1), scaled_q).to(in.key.scalar_type());
  g.grad_value = grad_value.to(in.value.scalar_type());
  return g;
}

}  // namespace selfattn
