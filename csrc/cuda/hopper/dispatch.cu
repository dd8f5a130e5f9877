// Whether the Hopper forward takes a call, and its launch for the call's
// dtype and head dim. Experimental until verified on an H100: it runs only
// when TORCH_SELFATTN_HOPPER=1.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <optional>
#include <stdexcept>

#include "common/env_flags.h"
#include "cuda/device/elements.cuh"
#include "cuda/hopper/launchers.h"
#include "cuda/hopper/tensor_map.h"

namespace selfattn::cuda {
namespace {

// The build embeds sm_90a machine code only when setup.py saw it in the
// architecture flags; without it the kernels' bodies are empty traps.
constexpr bool kBuiltForSm90a =
#if defined(TORCH_SELFATTN_SM90A)
    true;
#else
    false;
#endif

bool current_device_is_sm90() {
  int device = 0, major = 0, minor = 0;
  return cudaGetDevice(&device) == cudaSuccess &&
         cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
         cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess && major == 9 &&
         minor == 0;
}

bool compiled_head_dim(int64_t dim) {
  for (int d : hopper::kHeadDims) {
    if (dim == d) return true;
  }
  return false;
}

// PyTorch's SDPA and nothing more: no sliding window, bottom-right
// alignment, softcap, ALiBi or packed sequences, which the kernel does not
// implement.
bool sdpa_options_only(const AttentionParams& p) {
  return !p.bottom_right && p.window_left < 0 && p.window_right < 0 && p.softcap == 0.0 &&
         p.alibi_slopes == nullptr && !p.has_sequences() && p.rows_per_head == p.q_len;
}

// What the kernel computes: fp16 or bf16, E = Ev of a compiled head dim, no
// mask, no dropout, no option beyond SDPA's; the output written as 4-byte
// pairs of a row, so rows with unit column stride and even strides from a
// 4-byte aligned base.
bool computes(const AttentionParams& p) {
  const bool sixteen_bit = p.dtype == ElementType::Float16 || p.dtype == ElementType::BFloat16;
  const Strides4& out = p.out.stride;
  const bool pairs_aligned = reinterpret_cast<uintptr_t>(p.out.data) % 4 == 0 && out.col == 1 &&
                             out.row % 2 == 0 && out.head % 2 == 0 && out.batch % 2 == 0;
  const int64_t blocks = ceil_div(p.q_len, hopper::kForwardBlockM) * p.batch * p.q_heads;
  return sixteen_bit && p.head_dim == p.value_dim && compiled_head_dim(p.head_dim) &&
         p.mask_kind == MaskKind::None && !p.dropout.enabled() && sdpa_options_only(p) && p.kv_len > 0 &&
         p.q_len > 0 && pairs_aligned && blocks <= 0x7fffffff;
}

std::optional<hopper::ForwardMaps> forward_maps(const AttentionParams& p) {
  const auto map_of = [&](const TensorView& view, int64_t heads, int64_t rows, int box_rows) {
    return hopper::encode_tile_map({view, p.dtype, p.batch, heads, rows, p.head_dim, box_rows});
  };
  const auto q = map_of(p.q, p.q_heads, p.q_len, hopper::kForwardBlockM);
  const auto k = map_of(p.k, p.kv_heads, p.kv_len, hopper::kForwardBlockN);
  const auto v = map_of(p.v, p.kv_heads, p.kv_len, hopper::kForwardBlockN);
  if (!q || !k || !v) return std::nullopt;
  return hopper::ForwardMaps{*q, *k, *v};
}

template <typename T>
void launch_for_head_dim(const AttentionParams& p, const hopper::ForwardMaps& maps, cudaStream_t stream) {
  if (p.head_dim == 64) return hopper::launch_forward<T, 64>(p, maps, stream);
  hopper::launch_forward<T, 128>(p, maps, stream);
}

}  // namespace

bool hopper_forward_enabled() { return env_flag("TORCH_SELFATTN_HOPPER"); }

bool hopper_forward_supports(const AttentionParams& p) {
  return kBuiltForSm90a && computes(p) && current_device_is_sm90() && forward_maps(p).has_value();
}

void hopper_forward(const AttentionParams& p, cudaStream_t stream) {
  const std::optional<hopper::ForwardMaps> maps = forward_maps(p);
  if (!maps || !computes(p)) {
    throw std::logic_error("selfattn: hopper_forward called for a call that hopper_forward_supports declines");
  }
  if (p.dtype == ElementType::Float16) return launch_for_head_dim<__half>(p, *maps, stream);
  launch_for_head_dim<__nv_bfloat16>(p, *maps, stream);
}

}  // namespace selfattn::cuda
