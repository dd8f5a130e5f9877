// The CPU kernels of the core ops: check, allocate, fill the parameter
// structs, run the kernels of csrc/cpu/. The forward reads a paged cache in
// place; the backward runs on a gathered copy (api/core/paged_cache.h).
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <mutex>
#include <string>
#include <vector>

#include "api/core/core_op_kernels.h"
#include "api/core/input_checks.h"
#include "api/core/kernel_params.h"
#include "api/core/op_outputs.h"
#include "api/core/paged_cache.h"
#include "cpu/kernels.h"
#include "cpu/bf16_matrix_units.h"
#include "cpu/tile_gemm.h"
#include "cpu/vector_ops.h"

namespace selfattn {
namespace {

// Draws the dropout seed and offset from PyTorch's default CPU generator, so
// that torch.manual_seed makes dropout reproducible.
void draw_dropout_state(at::Tensor& rng_state) {
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(std::nullopt, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  auto* state = rng_state.data_ptr<int64_t>();
  state[0] = static_cast<int64_t>(gen->random64());
  state[1] = static_cast<int64_t>(gen->random64());
}

// The checks of the options that read their values, and the options as the
// kernels read them.
AttentionOptions checked_kernel_options(const char* op, const at::Tensor& query, const at::Tensor& key,
                                        const AttentionOptions& options) {
  check_sequence_values(op, query, key, options);
  return kernel_options(options, query.scalar_type());
}

ForwardOutputs attention_forward_cpu(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                     OptionalTensor attn_mask, double dropout_p, bool is_causal, double scale,
                                     const AttentionOptions& options) {
  const char* op = "attention_forward";
  check_core_inputs(op, query, key, value, attn_mask, dropout_p, is_causal, options);
  const AttentionOptions kernel = checked_kernel_options(op, query, key, options);
  auto [output, logsumexp, rng_state] = allocate_forward_outputs(query, value);
  rng_state.zero_();
  if (dropout_p > 0.0) draw_dropout_state(rng_state);

  AttentionParams params =
      make_params(query, key, value, attn_mask, output, logsumexp, dropout_p, is_causal, scale, kernel);
  read_dropout_state(rng_state, params.dropout);
  cpu::attention_forward(params);
  return {output, logsumexp, rng_state};
}

BackwardOutputs attention_backward_cpu(const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
                                       const at::Tensor& value, OptionalTensor attn_mask, const at::Tensor& output,
                                       const at::Tensor& logsumexp, const at::Tensor& rng_state, double dropout_p,
                                       bool is_causal, double scale, bool attn_mask_requires_grad,
                                       OptionalTensor grad_logsumexp, const AttentionOptions& options) {
  check_core_backward_inputs(grad_output, query, key, value, attn_mask, output, logsumexp, rng_state, dropout_p,
                             is_causal, attn_mask_requires_grad, grad_logsumexp, options);
  const AttentionOptions kernel = checked_kernel_options("attention_backward", query, key, options);
  if (options.block_table.has_value()) {
    return backward_on_gathered_cache(&attention_backward_cpu, grad_output, query, key, value, attn_mask, output,
                                      logsumexp, rng_state, dropout_p, is_causal, scale, attn_mask_requires_grad,
                                      grad_logsumexp, options);
  }
  auto [grad_query, grad_key, grad_value, grad_mask] =
      allocate_backward_outputs(query, key, value, attn_mask, attn_mask_requires_grad);
  zero_unused_key_gradients(options, grad_key, grad_value);
  const at::Tensor lse = logsumexp.contiguous();  // the kernels index it as (batch, Hq, L) rows
  auto delta = at::empty(lse.sizes(), lse.options());
  auto row_scale = at::empty(lse.sizes(), lse.options());
  const at::Tensor grad_lse = grad_logsumexp.has_value() ? grad_logsumexp->contiguous() : at::Tensor();

  AttentionBackwardParams params;
  params.fwd = make_params(query, key, value, attn_mask, output, lse, dropout_p, is_causal, scale, kernel);
  read_dropout_state(rng_state, params.fwd.dropout);
  params.grad_out = tensor_view(grad_output);
  params.grad_q = tensor_view(grad_query);
  params.grad_k = tensor_view(grad_key);
  params.grad_v = tensor_view(grad_value);
  if (attn_mask_requires_grad) params.grad_mask = tensor_view(grad_mask);
  params.delta = delta.data_ptr();
  params.row_scale = row_scale.data_ptr();
  if (grad_lse.defined()) params.grad_logsumexp = grad_lse.data_ptr();
  cpu::attention_backward(params);
  return {grad_query, grad_key, grad_value, grad_mask};
}

std::string cpu_tile_gemm() { return cpu::tile_gemm_kind(); }

std::vector<std::string> cpu_kernel_paths() {
  return {cpu::vector_ops_level(),
          cpu::bf16_matrix_units_available() ? "matrix units (AMX)" : "float products"};
}

}  // namespace

TORCH_LIBRARY_IMPL(selfattn, CPU, m) { register_core_ops<&attention_forward_cpu, &attention_backward_cpu>(m); }

TORCH_LIBRARY_IMPL(selfattn, CompositeExplicitAutograd, m) {
  m.impl("cpu_tile_gemm", &cpu_tile_gemm);
  m.impl("cpu_kernel_paths", &cpu_kernel_paths);
}

}  // namespace selfattn
