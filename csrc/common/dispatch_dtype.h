// Runs code for the element type of a call. The 16-bit types are the
// backend's own (c10::Half and c10::BFloat16 on the CPU, __half and
// __nv_bfloat16 on CUDA), so they are template arguments.
#pragma once

#include <type_traits>

#include "common/attention_params.h"

namespace selfattn {

// The accumulator type of an element type: double for double, float for
// everything else.
template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<scalar_t>{}) with the element type of `dtype`; a boolean
// dtype (never that of q) calls nothing.
template <typename Half, typename BFloat16, typename F>
void dispatch_dtype(ElementType dtype, F&& f) {
  switch (dtype) {
    case ElementType::Float16: return f(TypeTag<Half>{});
    case ElementType::BFloat16: return f(TypeTag<BFloat16>{});
    case ElementType::Float32: return f(TypeTag<float>{});
    case ElementType::Float64: return f(TypeTag<double>{});
    case ElementType::Bool: return;
  }
}

}  // namespace selfattn
