// The CUDA kernels of the core ops: check, allocate, fill the parameter
// structs, pick the kernel family, launch on the current stream. Nothing here
// synchronises with the host, so both ops can be captured in a CUDA graph.
//
// That is also why the values of cu_seqlens_q, cu_seqlens_k and seqused_k
// are not checked here, as the CPU op checks them (check_sequence_values):
// reading them would wait for the device. As with FlashAttention, the
// caller vouches that the offsets run from 0 to the packed length without
// decreasing, that no sequence is longer than max_seqlen_q / max_seqlen_k,
// and that seqused_k[s] does not exceed the keys sequence s has; rows past
// max_seqlen_q are otherwise left unwritten and out-of-range offsets read
// out of bounds. A paged cache's block_table is not read either: its
// entries are clamped to the cache's blocks, and the kernels run on the
// blocks gathered into a contiguous cache (api/core/paged_cache.h).
#include <c10/cuda/CUDAStream.h>
#include <ATen/Context.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <mutex>

#include "api/core/core_op_kernels.h"
#include "api/core/input_checks.h"
#include "api/core/kernel_params.h"
#include "api/core/op_outputs.h"
#include "api/core/paged_cache.h"
#include "cuda/kernels.h"

namespace selfattn {
namespace {

using cuda::BackwardBuffers;
using cuda::DropoutSeed;

// Philox seed and offset from PyTorch's generator of query's device, so that
// torch.manual_seed (and torch.cuda.manual_seed) make dropout reproducible.
// Under graph capture the generator hands out device pointers that every
// replay advances; the kernels read through them.
DropoutSeed forward_dropout_seed(const at::Tensor& query, at::Tensor& rng_state) {
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      std::nullopt, at::cuda::detail::getDefaultCUDAGenerator(query.device().index()));
  at::PhiloxCudaState state;
  {
    std::lock_guard<std::mutex> lock(gen->mutex_);
    // Each call takes its own offset; the kernels index the counter by score.
    state = gen->philox_cuda_state(4);
  }
  DropoutSeed seed;
  if (state.captured_) {
    seed.seed_ptr = state.seed_.ptr;
    seed.offset_ptr = state.offset_.ptr;
    seed.offset_add = state.offset_intragraph_;
  } else {
    seed.seed = state.seed_.val;
    seed.offset = state.offset_.val;
  }
  seed.record = rng_state.data_ptr<int64_t>();
  return seed;
}

// The backward regenerates the forward's dropout mask from what the forward
// recorded in rng_state, read on the device.
DropoutSeed backward_dropout_seed(const at::Tensor& rng_state) {
  DropoutSeed seed;
  seed.seed_ptr = rng_state.const_data_ptr<int64_t>();
  seed.offset_ptr = seed.seed_ptr + 1;
  return seed;
}

bool aligned_16_bytes(const at::Tensor& t) {
  const int64_t per_16_bytes = 16 / static_cast<int64_t>(t.element_size());
  bool aligned = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 && t.stride(3) == 1;
  for (int d = 0; d < 3; ++d) aligned = aligned && t.stride(d) % per_16_bytes == 0;
  return aligned && t.size(3) % per_16_bytes == 0;
}

// The tensor-core kernels copy rows in 16-byte pieces. A tensor whose rows
// allow it is used as it is (any batch and head strides, broadcast ones
// included); otherwise it is copied with its last dim zero-padded to a
// multiple of 8, which leaves every product unchanged.
at::Tensor tensor_core_operand(const at::Tensor& t) {
  if (aligned_16_bytes(t)) return t;
  const int64_t padded = (t.size(3) + 7) / 8 * 8;
  return at::constant_pad_nd(t, {0, padded - t.size(3)}, 0);
}

int64_t padded_to_8(int64_t n) { return (n + 7) / 8 * 8; }

bool takes_tensor_cores(const at::Tensor& query, const at::Tensor& value) {
  AttentionParams p;
  p.dtype = element_type(query.scalar_type());
  p.head_dim = padded_to_8(query.size(3));
  p.value_dim = padded_to_8(value.size(3));
  return cuda::tensor_core_supports(p);
}

// A buffer shaped like `result` with its last dim padded to `dim`, or
// `result` itself when no padding is needed; copy_back moves the real
// columns into `result` afterwards.
at::Tensor padded_like(const at::Tensor& result, int64_t dim) {
  if (result.size(3) == dim) return result;
  auto sizes = result.sizes().vec();
  sizes.back() = dim;
  return at::empty(sizes, result.options());
}

void copy_back(const at::Tensor& padded, at::Tensor& result) {
  if (!padded.is_same(result)) result.copy_(padded.narrow(3, 0, result.size(3)));
}

ForwardOutputs attention_forward_cuda(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                      OptionalTensor attn_mask, double dropout_p, bool is_causal, double scale,
                                      const AttentionOptions& options) {
  check_core_inputs("attention_forward", query, key, value, attn_mask, dropout_p, is_causal, options);
  if (options.block_table.has_value()) {
    return forward_on_gathered_cache(&attention_forward_cuda, query, key, value, attn_mask, dropout_p, is_causal,
                                     scale, options);
  }
  const c10::cuda::CUDAGuard guard(query.device());
  const AttentionOptions kernel = kernel_options(options, query.scalar_type());
  auto [output, logsumexp, rng_state] = allocate_forward_outputs(query, value);
  const bool dropout = dropout_p > 0.0;
  const bool no_rows = query.size(0) * query.size(1) * query.size(2) == 0;
  if (!dropout || no_rows || key.size(2) == 0) rng_state.zero_();
  if (no_rows) return {output, logsumexp, rng_state};
  if (key.size(2) == 0) {
    // No keys: every row is fully masked, which gives 0 with logsumexp −inf.
    output.zero_();
    logsumexp.fill_(-std::numeric_limits<double>::infinity());
    return {output, logsumexp, rng_state};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  DropoutSeed seed;
  if (dropout) seed = forward_dropout_seed(query, rng_state);

  if (takes_tensor_cores(query, value)) {
    const at::Tensor q = tensor_core_operand(query), k = tensor_core_operand(key), v = tensor_core_operand(value);
    at::Tensor out = padded_like(output, v.size(3));
    const AttentionParams params =
        make_params(q, k, v, attn_mask, out, logsumexp, dropout_p, is_causal, scale, kernel);
    if (cuda::hopper_forward_enabled() && cuda::hopper_forward_supports(params)) {
      cuda::hopper_forward(params, stream);
    } else {
      cuda::tensor_core_forward(params, seed, stream);
    }
    copy_back(out, output);
  } else {
    cuda::scalar_forward(make_params(query, key, value, attn_mask, output, logsumexp, dropout_p, is_causal, scale, kernel),
                         seed, stream);
  }
  return {output, logsumexp, rng_state};
}

BackwardOutputs attention_backward_cuda(const at::Tensor& grad_output, const at::Tensor& query,
                                        const at::Tensor& key, const at::Tensor& value, OptionalTensor attn_mask,
                                        const at::Tensor& output, const at::Tensor& logsumexp,
                                        const at::Tensor& rng_state, double dropout_p, bool is_causal, double scale,
                                        bool attn_mask_requires_grad, OptionalTensor grad_logsumexp,
                                        const AttentionOptions& options) {
  check_core_backward_inputs(grad_output, query, key, value, attn_mask, output, logsumexp, rng_state, dropout_p,
                             is_causal, attn_mask_requires_grad, grad_logsumexp, options);
  if (options.block_table.has_value()) {
    return backward_on_gathered_cache(&attention_backward_cuda, grad_output, query, key, value, attn_mask, output,
                                      logsumexp, rng_state, dropout_p, is_causal, scale, attn_mask_requires_grad,
                                      grad_logsumexp, options);
  }
  const c10::cuda::CUDAGuard guard(query.device());
  const AttentionOptions kernel = kernel_options(options, query.scalar_type());
  auto [grad_query, grad_key, grad_value, grad_mask] =
      allocate_backward_outputs(query, key, value, attn_mask, attn_mask_requires_grad);
  const bool mask_grad = attn_mask_requires_grad && attn_mask.has_value();
  const int64_t rows = query.size(0) * query.size(1) * query.size(2);
  // The logsumexp depends on q and k even when there are no output columns.
  if (rows == 0 || key.size(2) == 0 || (value.size(3) == 0 && !grad_logsumexp.has_value())) {
    // No rows, no keys or no output columns: the outputs do not depend on
    // the inputs.
    grad_query.zero_();
    grad_key.zero_();
    grad_value.zero_();
    if (mask_grad) grad_mask.zero_();
    return {grad_query, grad_key, grad_value, grad_mask};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor lse = logsumexp.contiguous();
  auto delta = at::empty(lse.sizes(), lse.options());

  BackwardBuffers buffers;
  // Under torch.use_deterministic_algorithms, dQ's additions keep one order
  // (the mask's and the scalar path's gradients have one writer per element
  // already, but for a broadcast mask's).
  buffers.ordered_grad_q = at::globalContext().deterministicAlgorithms();
  at::Tensor mask_sum;
  if (mask_grad) {
    mask_sum = at::zeros(attn_mask->sizes(), attn_mask->options().dtype(lse.scalar_type()));
    buffers.grad_mask_accum =
        tensor_view(mask_sum.expand({query.size(0), query.size(1), query.size(2), key.size(2)}));
    if (mask_sum.numel() < query.size(0) * query.size(1) * query.size(2) * key.size(2)) {
      // Blocks of several heads or batches add into one element at once.
      at::Context::alertNotDeterministic(
          "torch_selfattn's CUDA backward of the gradient of an attention mask broadcast over batch, heads, "
          "queries or keys");
    }
  }
  const DropoutSeed seed = backward_dropout_seed(rng_state);

  AttentionBackwardParams bp;
  bp.delta = delta.data_ptr();
  bp.fwd = make_params(query, key, value, attn_mask, output, lse, dropout_p, is_causal, scale, kernel);
  bp.grad_out = tensor_view(grad_output);
  // D = rowsum(dO ∘ O) uses the forward's rounded output. Each row of dS
  // then sums to the rounding error of O instead of 0, which a mask gradient
  // summed over the keys (a mask broadcast along S) would show; there D is
  // computed as Σ P ∘ dP instead, as the backward itself recomputes them.
  if (mask_grad) {
    cuda::compute_exact_delta(bp, seed, stream);
  } else {
    cuda::compute_delta(bp, stream);
  }
  // d lse_i / d S_ij = P_ij, so the logsumexp's gradient enters dS = P ∘ (dP − D) as −dlse in D.
  if (grad_logsumexp.has_value()) delta.sub_(*grad_logsumexp);

  if (takes_tensor_cores(query, value)) {
    const at::Tensor q = tensor_core_operand(query), k = tensor_core_operand(key), v = tensor_core_operand(value);
    const at::Tensor dout = tensor_core_operand(grad_output);
    at::Tensor dq = padded_like(grad_query, q.size(3)), dk = padded_like(grad_key, k.size(3)),
               dv = padded_like(grad_value, v.size(3));
    bp.fwd = make_params(q, k, v, attn_mask, output, lse, dropout_p, is_causal, scale, kernel);
    const int64_t accum_stride = cuda::tensor_core_head_dim(bp.fwd);
    auto dq_accum = at::zeros({(dq.size(0) * dq.size(1) * dq.size(2) + cuda::kGradQAccumSlackRows) * accum_stride},
                              query.options().dtype(at::kFloat));
    buffers.grad_q_accum = dq_accum.data_ptr<float>();
    buffers.grad_q_accum_row_stride = accum_stride;
    bp.grad_out = tensor_view(dout);
    zero_unused_key_gradients(options, dk, dv);
    bp.grad_q = tensor_view(dq);
    bp.grad_k = tensor_view(dk);
    bp.grad_v = tensor_view(dv);
    cuda::tensor_core_backward(bp, seed, buffers, stream);
    cuda::finish_grad_q(bp, buffers, stream);
    copy_back(dq, grad_query);
    copy_back(dk, grad_key);
    copy_back(dv, grad_value);
  } else {
    zero_unused_key_gradients(options, grad_key, grad_value);
    bp.grad_q = tensor_view(grad_query);
    bp.grad_k = tensor_view(grad_key);
    bp.grad_v = tensor_view(grad_value);
    cuda::scalar_backward(bp, seed, buffers, stream);
  }
  if (mask_grad) grad_mask.copy_(mask_sum);
  return {grad_query, grad_key, grad_value, grad_mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(selfattn, CUDA, m) { register_core_ops<&attention_forward_cuda, &attention_backward_cuda>(m); }

}  // namespace selfattn
