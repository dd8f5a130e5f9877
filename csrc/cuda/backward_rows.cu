// The row-wise steps around both backward paths: D = rowsum(dO ∘ O) before,
// and the conversion of the float32 dQ accumulator after.
#include "cuda/device/elements.cuh"

namespace selfattn::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / 32;

// One warp per (b, h, i) row; any strides.
template <typename T, typename acc_t>
__global__ void delta_kernel(const AttentionBackwardParams bp) {
  const AttentionParams& p = bp.fwd;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int64_t rows = p.batch * p.q_heads * p.q_len;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;
  const int64_t i = row % p.q_len, head = row / p.q_len;
  const int64_t b = head / p.q_heads, h = head % p.q_heads;
  const T* dout = static_cast<const T*>(bp.grad_out.data) + bp.grad_out.stride.offset(b, h, i, 0);
  const T* out = static_cast<const T*>(p.out.data) + p.out.stride.offset(b, h, i, 0);
  acc_t sum = 0;
  for (int64_t e = lane; e < p.value_dim; e += 32) {
    sum += to_acc<T, acc_t>(dout[e * bp.grad_out.stride.col]) * to_acc<T, acc_t>(out[e * p.out.stride.col]);
  }
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (lane == 0) static_cast<acc_t*>(bp.delta)[row] = sum;
}

// One thread per element of dQ; the accumulator's rows are `accum_stride` apart.
template <typename T>
__global__ void finish_grad_q_kernel(const AttentionBackwardParams bp, const float* accum, int64_t accum_stride) {
  const AttentionParams& p = bp.fwd;
  const int64_t n = p.batch * p.q_heads * p.q_len * p.head_dim;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = idx % p.head_dim, row = idx / p.head_dim;
    const int64_t i = row % p.q_len, head = row / p.q_len;
    T* dq = static_cast<T*>(bp.grad_q.data) + bp.grad_q.stride.offset(head / p.q_heads, head % p.q_heads, i, e);
    *dq = from_acc<T, float>(accum[row * accum_stride + e] * static_cast<float>(p.scale));
  }
}

template <typename T, typename acc_t>
void launch_delta(const AttentionBackwardParams& bp, cudaStream_t stream) {
  const int64_t rows = bp.fwd.batch * bp.fwd.q_heads * bp.fwd.q_len;
  delta_kernel<T, acc_t><<<static_cast<unsigned>(ceil_div(rows, kRowsPerBlock)), kThreads, 0, stream>>>(bp);
  check_launch("delta");
}

// Enough blocks to fill any GPU; the grid-stride loop covers the rest.
constexpr int64_t kMaxElementwiseBlocks = 65536;

template <typename T>
void launch_finish_grad_q(const AttentionBackwardParams& bp, const float* accum, int64_t accum_stride,
                          cudaStream_t stream) {
  const AttentionParams& p = bp.fwd;
  const int64_t n = p.batch * p.q_heads * p.q_len * p.head_dim;
  const int64_t blocks = std::min(ceil_div(n, kThreads), kMaxElementwiseBlocks);
  finish_grad_q_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(bp, accum, accum_stride);
  check_launch("finish_grad_q");
}

}  // namespace

void compute_delta(const AttentionBackwardParams& bp, cudaStream_t stream) {
  if (bp.fwd.batch * bp.fwd.q_heads * bp.fwd.q_len == 0) return;
  switch (bp.fwd.dtype) {
    case ElementType::Float16: return launch_delta<__half, float>(bp, stream);
    case ElementType::BFloat16: return launch_delta<__nv_bfloat16, float>(bp, stream);
    case ElementType::Float32: return launch_delta<float, float>(bp, stream);
    case ElementType::Float64: return launch_delta<double, double>(bp, stream);
    case ElementType::Bool: return;
  }
}

void finish_grad_q(const AttentionBackwardParams& bp, const BackwardBuffers& buffers, cudaStream_t stream) {
  if (bp.fwd.batch * bp.fwd.q_heads * bp.fwd.q_len * bp.fwd.head_dim == 0) return;
  const float* accum = buffers.grad_q_accum;
  const int64_t stride = buffers.grad_q_accum_row_stride;
  if (bp.fwd.dtype == ElementType::Float16) return launch_finish_grad_q<__half>(bp, accum, stride, stream);
  launch_finish_grad_q<__nv_bfloat16>(bp, accum, stride, stream);
}

}  // namespace selfattn::cuda
