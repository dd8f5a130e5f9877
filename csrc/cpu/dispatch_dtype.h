// Runs a CPU kernel template for the element type of the call, with the
// matching accumulator (common/dispatch_dtype.h).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/dispatch_dtype.h"

namespace selfattn::cpu {

template <template <typename, typename> class Kernel, typename Params>
void dispatch_cpu_dtype(const Params& params, ElementType dtype) {
  dispatch_dtype<c10::Half, c10::BFloat16>(dtype, [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    Kernel<scalar_t, acc_type<scalar_t>>::run(params);
  });
}

}  // namespace selfattn::cpu
