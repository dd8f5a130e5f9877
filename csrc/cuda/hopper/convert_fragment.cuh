// Float accumulators rounded to the 16-bit element type, register for
// register, in pairs (one cvt.rn.bf16x2 / f16x2 per two values).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_conversion.h>

namespace selfattn::cuda::hopper {

template <typename Source, typename Destination>
__device__ __forceinline__ void convert_fragment(const Source& from, Destination& to) {
  using To = typename Destination::value_type;
  constexpr int kValues = decltype(cute::size(from))::value;
  static_assert(decltype(cute::size(to))::value == kValues, "one value for one value");
  using Converter = cutlass::NumericArrayConverter<To, float, kValues>;
  *reinterpret_cast<typename Converter::result_type*>(to.data()) =
      Converter{}(*reinterpret_cast<const typename Converter::source_type*>(from.data()));
}

}  // namespace selfattn::cuda::hopper
