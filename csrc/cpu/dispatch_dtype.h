// Runs a kernel template for the element type of the call, with the matching
// accumulator: double for double inputs, float for everything else.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/attention_params.h"

namespace selfattn::cpu {

template <template <typename, typename> class Kernel, typename Params>
void dispatch_dtype(const Params& params, ElementType dtype) {
  switch (dtype) {
    case ElementType::Float32: return Kernel<float, float>::run(params);
    case ElementType::Float64: return Kernel<double, double>::run(params);
    case ElementType::Float16: return Kernel<c10::Half, float>::run(params);
    case ElementType::BFloat16: return Kernel<c10::BFloat16, float>::run(params);
    case ElementType::Bool: break;
  }
}

}  // namespace selfattn::cpu
