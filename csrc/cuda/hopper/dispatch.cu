// Whether the Hopper forward takes a call, and its launch for the call's
// dtype and head dim. Experimental until verified on an H100: it runs only
// when TORCH_SELFATTN_HOPPER=1.
#include <optional>
#include <stdexcept>

#include "common/env_flags.h"
#include "cuda/device/elements.cuh"
#include "cuda/hopper/launch_forward.h"

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
// mask, no dropout, no option beyond SDPA's, a positive scale (the
// exponentials fold it into one FFMA with the row maximum, which assumes
// that scaling keeps the order of the scores), and the logsumexp laid out
// for this call's rows alone.
bool computes(const AttentionParams& p) {
  const bool sixteen_bit = p.dtype == ElementType::Float16 || p.dtype == ElementType::BFloat16;
  const int64_t blocks = ceil_div(p.q_len, hopper::kForwardBlockM) * p.batch * p.q_heads;
  return sixteen_bit && p.head_dim == p.value_dim && compiled_head_dim(p.head_dim) &&
         p.mask_kind == MaskKind::None && !p.dropout.enabled() && sdpa_options_only(p) && p.kv_len > 0 &&
         p.q_len > 0 && p.scale > 0.0 && blocks <= 0x7fffffff;
}

std::optional<hopper::ForwardViews> forward_views(const AttentionParams& p) {
  const auto view_of = [&](const TensorView& view, int64_t heads, int64_t rows) {
    return hopper::copy_engine_view(view, p.batch, heads, rows, p.head_dim);
  };
  const auto q = view_of(p.q, p.q_heads, p.q_len), out = view_of(p.out, p.q_heads, p.q_len);
  const auto k = view_of(p.k, p.kv_heads, p.kv_len), v = view_of(p.v, p.kv_heads, p.kv_len);
  if (!q || !k || !v || !out) return std::nullopt;
  return hopper::ForwardViews{*q, *k, *v, *out};
}

template <typename Element>
void launch_for_head_dim(const AttentionParams& p, const hopper::ForwardViews& views, cudaStream_t stream) {
  if (p.head_dim == 64) return hopper::launch_forward<Element, 64>(p, views, stream);
  if (p.head_dim == 128) return hopper::launch_forward<Element, 128>(p, views, stream);
  hopper::launch_forward<Element, 256>(p, views, stream);
}

}  // namespace

bool hopper_forward_enabled() { return env_flag("TORCH_SELFATTN_HOPPER"); }

bool hopper_forward_supports(const AttentionParams& p) {
  return kBuiltForSm90a && computes(p) && current_device_is_sm90() && forward_views(p).has_value();
}

void hopper_forward(const AttentionParams& p, cudaStream_t stream) {
  const std::optional<hopper::ForwardViews> views = forward_views(p);
  if (!views || !computes(p)) {
    throw std::logic_error("selfattn: hopper_forward called for a call that hopper_forward_supports declines");
  }
  if (p.dtype == ElementType::Float16) return launch_for_head_dim<cutlass::half_t>(p, *views, stream);
  launch_for_head_dim<cutlass::bfloat16_t>(p, *views, stream);
}

}  // namespace selfattn::cuda
