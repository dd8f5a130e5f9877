// Checks csrc/cpu/gemm_avx2.cpp on its own, built without torch beside the
// AVX2 loops whose CPU check it shares (tests/test_gemm_avx2.py compiles and
// runs it): every layout of A and B,
// shapes across its 6 × 16 blocks, packed blocks and the growth of its
// packing buffer, k = 0, alpha and beta, against a double-precision sum;
// columns past n and the padding of C untouched; and the promise of its
// header, that an element's bits do not depend on the extent of the product
// or the element's place in it. Prints one line per failure; exit status 1
// if any.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/gemm_avx2.h"

namespace {

struct Product {
  int64_t m, n, k;
  bool a_transposed, b_transposed;
  float alpha, beta;
};

int failures = 0;

void fail(const Product& s, const char* what, double value) {
  std::printf("FAIL m=%lld n=%lld k=%lld a_t=%d b_t=%d alpha=%g beta=%g: %s %g\n", static_cast<long long>(s.m),
              static_cast<long long>(s.n), static_cast<long long>(s.k), s.a_transposed, s.b_transposed, s.alpha,
              s.beta, what, value);
  ++failures;
}

void check(const Product& s, std::mt19937& rng) {
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  const int64_t lda = (s.a_transposed ? s.m : s.k) + 3, ldb = (s.b_transposed ? s.k : s.n) + 5, ldc = s.n + 7;
  std::vector<float> a((s.a_transposed ? std::max<int64_t>(s.k, 1) : s.m) * lda);
  std::vector<float> b((s.b_transposed ? s.n : std::max<int64_t>(s.k, 1)) * ldb);
  std::vector<float> c(s.m * ldc);
  for (auto* v : {&a, &b, &c}) {
    for (float& x : *v) x = uniform(rng);
  }
  // With beta = 0, C is never read: a NaN there must not show.
  if (s.beta == 0.0f) {
    for (int64_t i = 0; i < s.m; ++i) std::fill_n(c.begin() + i * ldc, s.n, std::nanf(""));
  }
  const std::vector<float> before = c;
  selfattn::cpu::avx2::gemm(s.m, s.n, s.k, a.data(), lda, s.a_transposed, b.data(), ldb, s.b_transposed, c.data(),
                            ldc, s.alpha, s.beta);

  double worst = 0;
  for (int64_t i = 0; i < s.m; ++i) {
    for (int64_t j = 0; j < ldc; ++j) {
      const float got = c[i * ldc + j];
      if (j >= s.n) {
        if (std::memcmp(&got, &before[i * ldc + j], sizeof got) != 0) fail(s, "padding of C written at column", j);
        continue;
      }
      double sum = 0, magnitude = 0;
      for (int64_t p = 0; p < s.k; ++p) {
        const double term = double(s.a_transposed ? a[p * lda + i] : a[i * lda + p]) *
                            double(s.b_transposed ? b[j * ldb + p] : b[p * ldb + j]);
        sum += term;
        magnitude += std::fabs(term);
      }
      const double old_term = s.beta == 0.0f ? 0.0 : s.beta * double(before[i * ldc + j]);
      const double want = s.alpha * sum + old_term;
      // k roundings of the running sum, one of alpha, one of beta's term
      const double bound = (s.k + 2) * 6e-8 * (std::fabs(s.alpha) * magnitude + std::fabs(old_term));
      const double error = std::isnan(got) ? INFINITY : std::fabs(got - want);
      if (!(error <= bound)) worst = std::max(worst, error);
    }
  }
  if (worst > 0) fail(s, "error beyond the rounding bound:", worst);

  // The same elements again as a product of their own, offset by rows and
  // columns that move them to other places in the blocks and panels.
  if (s.m > 2 && s.n > 3 && s.beta == 0.0f) {
    const int64_t i0 = 1, j0 = 3, m = s.m - i0 - 1, n = s.n - j0;
    std::vector<float> part(m * ldc);
    const float* a_part = a.data() + (s.a_transposed ? i0 : i0 * lda);
    const float* b_part = b.data() + (s.b_transposed ? j0 * ldb : j0);
    selfattn::cpu::avx2::gemm(m, n, s.k, a_part, lda, s.a_transposed, b_part, ldb, s.b_transposed, part.data(), ldc,
                              s.alpha, 0.0f);
    for (int64_t i = 0; i < m; ++i) {
      if (std::memcmp(&part[i * ldc], &c[(i0 + i) * ldc + j0], n * sizeof(float)) != 0) {
        fail(s, "bits differ in a sub-product at row", i);
        break;
      }
    }
  }
}

}  // namespace

int main() {
  if (!selfattn::cpu::avx2::gemm_available()) {
    std::printf("SKIP: this CPU does not run the AVX2 products\n");
    return 0;
  }
  std::mt19937 rng(20261207);
  const int64_t ms[] = {1, 5, 6, 7, 13, 64, 70};
  const int64_t ns[] = {1, 15, 16, 17, 33, 600};
  const int64_t ks[] = {0, 1, 7, 8, 9, 64, 300, 4100};  // 600 × 300 and k = 4100 outgrow one packed block
  const float alphas[] = {1.0f, 0.125f}, betas[] = {0.0f, 1.0f, 0.5f};
  int64_t count = 0;
  for (int64_t m : ms) {
    for (int64_t n : ns) {
      for (int64_t k : ks) {
        if (m * n * k > 30'000'000) continue;
        for (int layout = 0; layout < 4; ++layout) {
          const Product s{m, n, k, (layout & 1) != 0, (layout & 2) != 0, alphas[count % 2], betas[count % 3]};
          check(s, rng);
          ++count;
        }
      }
    }
  }
  std::printf("%lld products checked, %d failures\n", static_cast<long long>(count), failures);
  return failures == 0 ? 0 : 1;
}
