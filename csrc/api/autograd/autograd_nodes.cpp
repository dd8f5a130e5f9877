#include "api/autograd/autograd_nodes.h"

#include <ATen/functorch/BatchedTensorImpl.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>

#include <algorithm>
#include <mutex>

#include "api/double_backward/backward_derivative.h"
#include "api/autograd/forward_tangent.h"
#include "api/core/op_calls.h"

namespace selfattn {
namespace {

using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

std::optional<at::Tensor> present(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// A tensor's tangent at forward-AD level 0 (functorch's jvp maps its levels
// onto it), undefined when it has none.
at::Tensor tangent(const std::optional<at::Tensor>& t) {
  return torch::autograd::isFwGradDefined(t) ? t->_fw_grad(/*level=*/0) : at::Tensor();
}

// The value without its tangent, so that computing a tangent records none.
at::Tensor primal(const at::Tensor& t) { return t._fw_primal(/*level=*/0); }

// The node of attention_forward: its backward is attention_backward.
struct AttentionForwardNode : Node {
  SavedVariable query, key, value, attn_mask, output, logsumexp, rng_state;
  CallSettings settings;

  std::string name() const override { return "selfattn::AttentionForwardBackward"; }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const at::Tensor out = output.unpack(c10::intrusive_ptr<Node>::unsafe_reclaim_from_nonowning(this));
    const at::Tensor grad_output = grads[0].defined() ? grads[0] : at::zeros_like(out);
    const CallSettings& s = settings;
    // Through the dispatcher, so that attention_backward's own Autograd
    // kernel records the call when a second derivative is wanted.
    auto [grad_query, grad_key, grad_value, grad_mask] = call_attention_backward(
        grad_output, query.unpack(), key.unpack(), value.unpack(), present(attn_mask.unpack()), out,
        logsumexp.unpack(), rng_state.unpack(), s.dropout_p, s.is_causal, s.scale, s.attn_mask_requires_grad,
        present(grads[1]), s.options);
    return {grad_query, grad_key, grad_value, s.attn_mask_requires_grad ? grad_mask : at::Tensor()};
  }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (SavedVariable* v : {&query, &key, &value, &attn_mask, &output, &logsumexp, &rng_state}) v->reset_data();
  }
};

// The node of attention_backward: the second derivative of attention.
struct AttentionBackwardNode : Node {
  SavedVariable grad_output, query, key, value, attn_mask, output, logsumexp, rng_state, grad_logsumexp;
  CallSettings settings;

  std::string name() const override { return "selfattn::AttentionBackwardBackward"; }

  // Gradients for grad_output, query, key, value, attn_mask and
  // grad_logsumexp (the node's edges, in that order); none for output and
  // logsumexp, whose dependence
  // on the inputs the recompute already differentiates (see
  // backward_derivative.h).
  variable_list apply(variable_list&& grad_grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    // The recompute's own autograd call gives wrong numbers with gradients
    // that vmap batches (its graph is built unbatched): refuse, not guess.
    TORCH_CHECK_NOT_IMPLEMENTED(
        std::none_of(grad_grads.begin(), grad_grads.end(), at::functorch::isBatchedTensor),
        "attention_backward: its derivative (the second derivative of attention) does not run under vmap, as in "
        "torch.func.hessian or jacrev(jacrev(f)); take Hessian-vector products with grad(grad(f)) or "
        "torch.autograd.grad(create_graph=True) instead");
    const std::optional<at::Tensor> mask = present(attn_mask.unpack());
    const std::optional<at::Tensor> grad_lse = present(grad_logsumexp.unpack());
    std::array<bool, kBackwardInputs> wanted{};
    for (int i = 0; i < kBackwardInputs; ++i) wanted[i] = task_should_compute_output(i);
    wanted[kAttnMask] = wanted[kAttnMask] && mask.has_value();
    wanted[kGradLogsumexp] = wanted[kGradLogsumexp] && grad_lse.has_value();
    const std::array<at::Tensor, 4> first_order_grads = {grad_grads[0], grad_grads[1], grad_grads[2],
                                                         grad_grads[3]};
    BackwardInputs g;
    const bool any_wanted = std::any_of(wanted.begin(), wanted.end(), [](bool w) { return w; });
    const bool any_grad = std::any_of(first_order_grads.begin(), first_order_grads.end(),
                                      [](const at::Tensor& t) { return t.defined(); });
    if (any_wanted && any_grad) {
      const BackwardCall call{grad_output.unpack(), query.unpack(),     key.unpack(),       value.unpack(), mask,
                              output.unpack(),      logsumexp.unpack(), rng_state.unpack(), settings,       grad_lse};
      // The engine runs a backward in grad mode exactly when create_graph is set.
      g = attention_backward_derivative(call, first_order_grads, wanted, at::GradMode::is_enabled());
    }
    return {g[kGradOutput], g[kQuery], g[kKey], g[kValue], g[kAttnMask], g[kGradLogsumexp]};
  }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (SavedVariable* v :
         {&grad_output, &query, &key, &value, &attn_mask, &output, &logsumexp, &rng_state, &grad_logsumexp}) {
      v->reset_data();
    }
  }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> record_attention_forward(const at::Tensor& query,
                                                                        const at::Tensor& key,
                                                                        const at::Tensor& value,
                                                                        const std::optional<at::Tensor>& attn_mask,
                                                                        const CallSettings& settings) {
  TORCH_CHECK(!settings.options.alibi_slopes.has_value() || !settings.options.alibi_slopes->requires_grad(),
              "attention_forward: alibi_slopes gets no gradient; pass alibi_slopes.detach()");
  c10::intrusive_ptr<AttentionForwardNode> node;
  if (torch::autograd::compute_requires_grad(query, key, value, attn_mask)) {
    node = c10::make_intrusive<AttentionForwardNode>();
    node->set_next_edges(torch::autograd::collect_next_edges(query, key, value, attn_mask));
  }
  const CallSettings& s = settings;
  auto [output, logsumexp, rng_state] = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_attention_forward(query, key, value, attn_mask, s.dropout_p, s.is_causal, s.scale, s.options);
  }();
  if (node) {
    torch::autograd::set_history(output, node);
    torch::autograd::set_history(logsumexp, node);  // rng_state is not differentiable
    node->query = SavedVariable(query, false);
    node->key = SavedVariable(key, false);
    node->value = SavedVariable(value, false);
    node->attn_mask = SavedVariable(attn_mask, false);
    node->output = SavedVariable(output, true);
    node->logsumexp = SavedVariable(logsumexp, false);
    node->rng_state = SavedVariable(rng_state, false);
    node->settings = settings;
    node->settings.attn_mask_requires_grad = attn_mask.has_value() && attn_mask->requires_grad();
  }
  const InputTangents tangents{tangent(query), tangent(key), tangent(value), tangent(attn_mask)};
  if (tangents.query.defined() || tangents.key.defined() || tangents.value.defined() ||
      tangents.attn_mask.defined()) {
    const std::optional<at::Tensor> mask = attn_mask.has_value() ? present(primal(*attn_mask)) : std::nullopt;
    const OutputTangents t = attention_forward_tangent(primal(query), primal(key), primal(value), mask, settings,
                                                       tangents);
    output._set_fw_grad(t.output, /*level=*/0, /*is_inplace_op=*/false);
    logsumexp._set_fw_grad(t.logsumexp, /*level=*/0, /*is_inplace_op=*/false);
  }
  return {output, logsumexp, rng_state};
}

std::array<at::Tensor, 4> record_attention_backward(const at::Tensor& grad_output, const at::Tensor& query,
                                                    const at::Tensor& key, const at::Tensor& value,
                                                    const std::optional<at::Tensor>& attn_mask,
                                                    const at::Tensor& output, const at::Tensor& logsumexp,
                                                    const at::Tensor& rng_state,
                                                    const std::optional<at::Tensor>& grad_logsumexp,
                                                    const CallSettings& s) {
  TORCH_CHECK_NOT_IMPLEMENTED(
      !tangent(grad_output).defined() && !tangent(query).defined() && !tangent(key).defined() &&
          !tangent(value).defined() && !tangent(attn_mask).defined() && !tangent(grad_logsumexp).defined(),
      "attention_backward: forward-mode AD (jvp) of the backward pass is not implemented; differentiate it in "
      "reverse mode (double backward) instead");
  c10::intrusive_ptr<AttentionBackwardNode> node;
  if (torch::autograd::compute_requires_grad(grad_output, query, key, value, attn_mask, grad_logsumexp)) {
    node = c10::make_intrusive<AttentionBackwardNode>();
    node->set_next_edges(
        torch::autograd::collect_next_edges(grad_output, query, key, value, attn_mask, grad_logsumexp));
  }
  auto [grad_query, grad_key, grad_value, grad_mask] = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_attention_backward(grad_output, query, key, value, attn_mask, output, logsumexp, rng_state,
                                   s.dropout_p, s.is_causal, s.scale, s.attn_mask_requires_grad, grad_logsumexp,
                                   s.options);
  }();
  if (node) {
    for (const at::Tensor* g : {&grad_query, &grad_key, &grad_value}) torch::autograd::set_history(*g, node);
    // Without attn_mask_requires_grad, grad_mask is an empty placeholder.
    if (s.attn_mask_requires_grad) {
      torch::autograd::set_history(grad_mask, node);
    } else {
      node->add_input_metadata(Node::undefined_input());
    }
    node->grad_output = SavedVariable(grad_output, false);
    node->query = SavedVariable(query, false);
    node->key = SavedVariable(key, false);
    node->value = SavedVariable(value, false);
    node->attn_mask = SavedVariable(attn_mask, false);
    node->output = SavedVariable(output, false);
    node->logsumexp = SavedVariable(logsumexp, false);
    node->rng_state = SavedVariable(rng_state, false);
    node->grad_logsumexp = SavedVariable(grad_logsumexp, false);
    node->settings = s;
  }
  return {grad_query, grad_key, grad_value, grad_mask};
}

}  // namespace selfattn
