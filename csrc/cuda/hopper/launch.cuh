// The host side of the Hopper forward for one element type and head dim:
// the copy engine's descriptors (CuTe's make_tma_copy, which reaches the
// driver through the runtime, so the extension links no libcuda), the
// parameters, the launch. Each head dim is instantiated in a file of its own
// (forward_hdim*.cu), so the build compiles them in parallel.
#pragma once

#include <cuda_runtime.h>

#include "cuda/device/elements.cuh"
#include "cuda/hopper/forward_kernel.cuh"
#include "cuda/hopper/launch_forward.h"

namespace selfattn::cuda::hopper {

template <typename Traits>
typename Traits::GmemLayout gmem_layout(const CopyEngineView& view) {
  return make_layout(make_shape(view.rows, view.cols, view.heads, view.batch),
                     make_stride(view.row_stride, _1{}, view.head_stride, view.batch_stride));
}

template <typename Element, int kDim>
void launch_forward(const AttentionParams& p, const ForwardViews& views, cudaStream_t stream) {
  using Traits = ForwardTraits<Element, kDim>;
  const auto tensor = [](const CopyEngineView& view) {
    return Traits::gmem_tensor(static_cast<const Element*>(view.data), gmem_layout<Traits>(view));
  };
  using Rows = typename Traits::Rows;
  using Dim = typename Traits::Dim;
  ForwardParams<Traits> params{
      make_tma_copy(SM90_TMA_LOAD{}, tensor(views.q), typename Traits::SmemLayoutQHalf{}, Shape<Rows, Dim>{}, _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, tensor(views.k), take<0, 2>(typename Traits::SmemLayoutKV{}),
                    Shape<typename Traits::BlockN, Dim>{}, _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, tensor(views.v), take<0, 2>(typename Traits::SmemLayoutKV{}),
                    Shape<typename Traits::BlockN, Dim>{}, _1{}),
      make_tma_copy(SM90_TMA_STORE{}, tensor(views.out), typename Traits::SmemLayoutQHalf{}, Shape<Rows, Dim>{}, _1{}),
      gmem_layout<Traits>(views.q).shape(),
      gmem_layout<Traits>(views.k).shape(),
      static_cast<float*>(p.logsumexp),
      static_cast<int32_t>(p.q_len),
      static_cast<int32_t>(p.kv_len),
      static_cast<int32_t>(p.q_heads),
      static_cast<int32_t>(p.group_size()),
      static_cast<int32_t>(ceil_div(p.q_len, Traits::kBlockM)),
      static_cast<float>(p.scale) * kLog2e,
      static_cast<float>(p.scale),
      p.causal,
  };

  const auto kernel = hopper_forward_kernel<Traits>;
  // More than 48 KB of shared memory must be asked for; the attribute is per
  // device, so it is set at every launch (it costs little).
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Traits::kSharedBytes);
  const int64_t blocks = params.m_blocks * p.batch * p.q_heads;
  kernel<<<static_cast<unsigned>(blocks), Traits::kThreads, Traits::kSharedBytes, stream>>>(params);
  check_launch("Hopper forward");
}

// One head dim's forward for both 16-bit types.
#define SELFATTN_INSTANTIATE_HOPPER_FORWARD(kDim)                                                                 \
  template void launch_forward<cutlass::half_t, kDim>(const AttentionParams&, const ForwardViews&, cudaStream_t); \
  template void launch_forward<cutlass::bfloat16_t, kDim>(const AttentionParams&, const ForwardViews&, cudaStream_t);

}  // namespace selfattn::cuda::hopper
