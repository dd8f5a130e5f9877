#include "cuda/hopper/copy_engine_view.h"

#include <limits>

namespace selfattn::cuda::hopper {
namespace {

constexpr int64_t kElementBytes = 2;

bool fits_int32(int64_t n) { return n >= 1 && n <= std::numeric_limits<int32_t>::max(); }

}  // namespace

std::optional<CopyEngineView> copy_engine_view(const TensorView& view, int64_t batch, int64_t heads, int64_t rows,
                                               int64_t cols) {
  if (view.stride.col != 1 || reinterpret_cast<uintptr_t>(view.data) % 16 != 0) return std::nullopt;
  if (!fits_int32(batch) || !fits_int32(heads) || !fits_int32(rows) || !fits_int32(cols)) return std::nullopt;
  // Outer dimensions from the innermost out; packed is the stride a size-1
  // dimension gets.
  const int64_t sizes[3] = {rows, heads, batch};
  const int64_t given[3] = {view.stride.row, view.stride.head, view.stride.batch};
  int64_t strides[3];
  int64_t packed = cols;
  for (int d = 0; d < 3; ++d) {
    strides[d] = sizes[d] == 1 ? packed : given[d];
    const int64_t bytes = strides[d] * kElementBytes;
    if (bytes <= 0 || bytes % 16 != 0 || bytes >= (int64_t{1} << 40)) return std::nullopt;
    packed = strides[d] * sizes[d];
  }
  return CopyEngineView{view.data,  static_cast<int32_t>(rows), static_cast<int32_t>(cols),
                        static_cast<int32_t>(heads), static_cast<int32_t>(batch), strides[0], strides[1], strides[2]};
}

}  // namespace selfattn::cuda::hopper
