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

void bf16_product(int64_t m, int64_t n, int64_t k, const uint16_t* a, int64_t lda, const uint16_t* packed_b,
                  int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  at::native::cpublas::brgemm(m, n, k + (k % 2), lda, ldb, ldc, accumulate, reinterpret_cast<const c10::BFloat16*>(a),
                              reinterpret_cast<const c10::BFloat16*>(packed_b), c, /*is_vnni=*/true);
}

void release_matrix_units() { at::native::cpublas::brgemm_release(/*is_vnni=*/true); }

}  // namespace selfattn::cpu
