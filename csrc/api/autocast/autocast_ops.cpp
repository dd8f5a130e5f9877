// Autocast kernels of the user-facing ops, so that code running under
// torch.autocast (mixed-precision training) calls them as it calls PyTorch's
// SDPA. PyTorch lists scaled_dot_product_attention among the ops that run in
// the autocast dtype (bfloat16 on the CPU, float16 on CUDA by default): each
// floating tensor argument on the autocast device is cast to that dtype,
// float64 excepted. Ours do the same with every tensor argument but
// alibi_slopes and sinks, which are read in float32 anyway and which
// PyTorch's SDPA does not have.
#include <ATen/autocast_mode.h>
#include <torch/library.h>

namespace selfattn {
namespace {

template <c10::DeviceType device>
void cast_and_call(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& arguments = op.schema().arguments();
  const size_t first = stack->size() - arguments.size();
  const at::ScalarType dtype = at::autocast::get_lower_precision_fp_from_device_type(device);
  for (size_t i = 0; i < arguments.size(); ++i) {
    c10::IValue& value = (*stack)[first + i];
    const std::string& name = arguments[i].name();
    if (value.isTensor() && name != "alibi_slopes" && name != "sinks") {
      value = at::autocast::cached_cast(dtype, value.toTensor(), device);
    }
  }
  c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(device));
  op.callBoxed(stack);
}

template <c10::DeviceType device>
void register_autocast(torch::Library& m) {
  for (const char* op : {"scaled_dot_product_attention", "varlen_attention", "kv_cache_attention",
                         "scaled_dot_product_attention.with_lse", "varlen_attention.with_lse",
                         "kv_cache_attention.with_lse"}) {
    m.impl(op, torch::CppFunction::makeFromBoxedFunction<&cast_and_call<device>>());
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(selfattn, AutocastCPU, m) { register_autocast<c10::DeviceType::CPU>(m); }
TORCH_LIBRARY_IMPL(selfattn, AutocastCUDA, m) { register_autocast<c10::DeviceType::CUDA>(m); }

}  // namespace selfattn
