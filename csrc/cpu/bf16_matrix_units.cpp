#include "cpu/bf16_matrix_units.h"

#include <ATen/native/CPUBlas.h>
#include <c10/util/BFloat16.h>

#include "common/env_flags.h"

namespace selfattn::cpu {

bool bf16_matrix_units_available() {
  // Asked once: the answer depends on the CPU only.
  static const bool available =
      at::native::cpublas::could_pack(at::kBFloat16) && !env_flag("TORCH_SELFATTN_NO_MATRIX_UNITS");
  return available;
}

void pack_transposed(const TensorView& m, int64_t b, int64_t h, int64_t row0, int64_t n, int64_t k, uint16_t* packed) {
  const auto* base = static_cast<const uint16_t*>(m.data);
  for (int64_t j = 0; j < n; ++j) {
    const uint16_t* row = base + m.stride.offset(b, h, row0 + j, 0);
    for (int64_t i = 0; i < k; i += 2) {
      uint16_t* pair = packed + (i / 2) * 2 * n + 2 * j;
      pair[0] = row[i * m.stride.col];
      pair[1] = row[(i + 1) * m.stride.col];
    }
  }
}

void pack_rows(const TensorView& m, int64_t b, int64_t h, int64_t row0, int64_t k, int64_t col0, int64_t n,
               uint16_t* packed) {
  const auto* base = static_cast<const uint16_t*>(m.data);
  for (int64_t i = 0; i < k + (k % 2); ++i) {
    uint16_t* out = packed + (i / 2) * 2 * n + (i % 2);
    if (i == k) {  // the zero row that evens out an odd k
      for (int64_t j = 0; j < n; ++j) out[2 * j] = 0;
      continue;
    }
    const uint16_t* row = base + m.stride.offset(b, h, row0 + i, col0);
    for (int64_t j = 0; j < n; ++j) out[2 * j] = row[j * m.stride.col];
  }
}

void bf16_product(int64_t m, int64_t n, int64_t k, const uint16_t* a, int64_t lda, const uint16_t* packed_b,
                  int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  at::native::cpublas::brgemm(m, n, k + (k % 2), lda, ldb, ldc, accumulate, reinterpret_cast<const c10::BFloat16*>(a),
                              reinterpret_cast<const c10::BFloat16*>(packed_b), c, /*is_vnni=*/true);
}

void release_matrix_units() { at::native::cpublas::brgemm_release(/*is_vnni=*/true); }

}  // namespace selfattn::cpu
