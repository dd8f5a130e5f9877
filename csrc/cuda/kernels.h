// Entry points of the CUDA kernels, called by csrc/cuda/cuda_ops.cpp. Like the
// CPU kernels they read the plain parameter structs of
// common/attention_params.h and never see a torch header, so every .cu file
// compiles on its own.
//
// Two families:
//   - tensor_core/: fp16 and bf16, mma.sync m16n8k16 (sm_80 and newer), for
//     head dims up to 256 whose rows are 16-byte aligned; on sm_90 its
//     forward gives way to hopper/ where that takes the call (opt-in);
//   - scalar/: any dtype and head dim, no tensor cores; the fp32 and fp64
//     path (gradcheck runs on it) and the fallback for what the first family
//     does not take.
#pragma once

#include <cuda_runtime.h>

#include "common/attention_params.h"

namespace selfattn::cuda {

// Where the kernels read the dropout seed and offset. Under CUDA-graph
// capture PyTorch's generator hands out device pointers that each replay
// fills in, so the values must be read on the device, not baked into the
// launch; the backward reads the ones the forward recorded in rng_state.
struct DropoutSeed {
  const int64_t* seed_ptr = nullptr;    // when set, read seed from here ...
  const int64_t* offset_ptr = nullptr;  // ... and offset = *offset_ptr + offset_add
  uint64_t seed = 0;                    // otherwise these two
  uint64_t offset = 0;
  uint64_t offset_add = 0;
  int64_t* record = nullptr;  // the forward writes {seed, offset} here (the op's rng_state)
};

// What the backward needs beyond AttentionBackwardParams. The API zeroes both
// buffers before the kernels run.
struct BackwardBuffers {
  // dQ accumulated in float32 over key tiles, tensor-core path only: rows
  // of (batch, Hq, L) order, grad_q_accum_row_stride floats apart (the
  // kernels' padded head dim, tensor_core_head_dim), then
  // kGradQAccumSlackRows more. The kernels add every column of every row of
  // a query tile without a test: what falls past E or past a sequence's
  // rows is exactly 0 (zero-filled K columns; P = 0), and lands in the
  // padding, in another row as +0.0, or in the slack rows.
  float* grad_q_accum = nullptr;
  int64_t grad_q_accum_row_stride = 0;
  // The mask gradient in the accumulator type (float, or double for float64
  // inputs), broadcast to (batch, Hq, L, S) through zero strides: the
  // kernels add dS into it atomically, which sums over the broadcast
  // dimensions. Unused (data null) without a mask gradient.
  TensorView grad_mask_accum;
  // Whether every dQ element must take its additions in the same order on
  // every run (torch.use_deterministic_algorithms): the tensor-core
  // backward then runs one key block after the other (see launch.cuh).
  bool ordered_grad_q = false;
};

// --- tensor-core path (tensor_core/) ---

// Rows past the last of grad_q_accum's, at least a query tile of the backward.
constexpr int64_t kGradQAccumSlackRows = 64;

// The head dim the tensor-core kernels compute with: E and Ev padded up to
// the next one they are compiled for.
int tensor_core_head_dim(const AttentionParams& p);

// Whether the tensor-core kernels take this call: fp16 or bf16, E and Ev at
// most 256, and q, k, v (and, for the backward, dO) with unit column stride
// and every other stride and the base address 16-byte aligned.
bool tensor_core_supports(const AttentionParams& p);

void tensor_core_forward(const AttentionParams& p, const DropoutSeed& seed, cudaStream_t stream);

// Needs bp.delta filled by compute_delta (or compute_exact_delta); writes grad_q_accum (then
// finish_grad_q), grad_k, grad_v and the mask gradient.
void tensor_core_backward(const AttentionBackwardParams& bp, const DropoutSeed& seed, const BackwardBuffers& buffers,
                          cudaStream_t stream);

// grad_q = scale · grad_q_accum, in q's dtype and grad_q's strides.
void finish_grad_q(const AttentionBackwardParams& bp, const BackwardBuffers& buffers, cudaStream_t stream);

// --- Hopper path (hopper/), forward only: experimental until verified on an H100 ---

// Whether TORCH_SELFATTN_HOPPER=1 is set. Read at every call (a getenv, far
// below a launch's cost) so that tests can switch the path within a process.
bool hopper_forward_enabled();

// Whether the Hopper forward (CuTe: TMA, wgmma, warp specialisation) takes
// this call: a build with sm_90a code, a compute capability 9.0 device, fp16
// or bf16, E = Ev = 64, 128 or 256, no mask, no dropout, a positive scale,
// none of the options beyond SDPA's (windows, bottom-right, softcap, ALiBi,
// packed sequences), and q, k, v and out that the copy engine can describe
// (16-byte aligned base and strides, unit column stride, no broadcast
// strides). Everything else stays on tensor_core_forward.
bool hopper_forward_supports(const AttentionParams& p);

// Writes out and logsumexp as tensor_core_forward does.
void hopper_forward(const AttentionParams& p, cudaStream_t stream);

// --- scalar path (scalar/) ---

void scalar_forward(const AttentionParams& p, const DropoutSeed& seed, cudaStream_t stream);

// Needs bp.delta filled by compute_delta (or compute_exact_delta); writes grad_q, grad_k, grad_v and
// the mask gradient.
void scalar_backward(const AttentionBackwardParams& bp, const DropoutSeed& seed, const BackwardBuffers& buffers,
                     cudaStream_t stream);

// Used instead of compute_delta when the mask gradient is wanted, so that every row of dS sums to zero as it does exactly.
void compute_exact_delta(const AttentionBackwardParams& bp, const DropoutSeed& seed, cudaStream_t stream);

// --- shared by both backward paths (backward_rows.cu) ---

// bp.delta[b, h, i] = Σ_e dO[b, h, i, e] · O[b, h, i, e], in the accumulator type.
void compute_delta(const AttentionBackwardParams& bp, cudaStream_t stream);

}  // namespace selfattn::cuda
