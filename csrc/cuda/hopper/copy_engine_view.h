// A 16-bit (batch, heads, rows, cols) tensor as the copy engine (TMA) can
// describe it, or nothing where it cannot. Checked on the host before CuTe
// builds a descriptor, since CuTe only asserts (and the driver refuses)
// what this declines.
#pragma once

#include <cstdint>
#include <optional>

#include "common/attention_params.h"

namespace selfattn::cuda::hopper {

struct CopyEngineView {
  const void* data;
  int32_t rows, cols, heads, batch;
  // In elements; a dimension of size 1 gets the packed stride, so that
  // whatever stride the tensor carries there (often 1) cannot fail the
  // driver's rules for a dimension that is never stepped over.
  int64_t row_stride, head_stride, batch_stride;
};

// The view of a 16-bit tensor, or nothing when the copy engine cannot read
// it in place: a base address or a stride that is not a multiple of 16
// bytes, a column stride other than 1, a broadcast (stride 0), a stride of
// 2^40 bytes or more, an extent past 2^31 - 1.
std::optional<CopyEngineView> copy_engine_view(const TensorView& view, int64_t batch, int64_t heads, int64_t rows,
                                               int64_t cols);

}  // namespace selfattn::cuda::hopper
