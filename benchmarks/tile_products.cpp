// The tile products alone, one thread, on the shapes the CPU kernels give
// them: MKL's sgemm (the BLAS that PyTorch links, from libtorch_cpu) and our
// AVX2 products (csrc/cpu/gemm_avx2.cpp), and the core's FMA peak, measured
// in the same run by a loop of independent FMAs. bench_tile_products.py
// builds and runs it; it prints markdown rows.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <immintrin.h>
#include <random>
#include <vector>

#include "cpu/gemm_avx2.h"

extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*);
int MKL_Set_Num_Threads_Local(int threads);
}

namespace {

double seconds_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// 12 independent chains of 8-lane FMAs: enough to fill both FMA pipes.
__attribute__((target("avx2,fma"))) double fma_peak_gflops() {
  __m256 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(1.0f + i * 1e-7f);
  const __m256 b = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
  const int64_t steps = 200'000'000;
  const double start = seconds_now();
  for (int64_t s = 0; s < steps; ++s) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(acc[i], b, c);
  }
  const double elapsed = seconds_now() - start;
  float sink = 0;
  for (int i = 0; i < 12; ++i) sink += acc[i][0];
  std::fprintf(stderr, "(fma sink %g)\n", sink);
  return steps * 12.0 * 16 / elapsed / 1e9;
}

struct Shape {
  const char* name;
  int m, n, k;
  bool a_transposed, b_transposed;
  float beta;
};

// Row-major C = op(A)·op(B) + beta·C through column-major BLAS: Cᵀ = op(B)ᵀ·op(A)ᵀ.
void mkl_product(const Shape& s, const float* a, int lda, const float* b, int ldb, float* c) {
  const float one = 1.0f;
  sgemm_(s.b_transposed ? "T" : "N", s.a_transposed ? "T" : "N", &s.n, &s.m, &s.k, &one, b, &ldb, a, &lda, &s.beta,
         c, &s.n);
}

// The best of 5 timings of `runs` calls: the runs are short and
// repeatable, and the best is the least disturbed.
template <typename Fn>
double best_seconds_per_call(Fn fn, int runs) {
  double best = 1e30;
  for (int trial = 0; trial < 5; ++trial) {
    const double start = seconds_now();
    for (int r = 0; r < runs; ++r) fn();
    best = std::min(best, (seconds_now() - start) / runs);
  }
  return best;
}

}  // namespace

int main() {
  MKL_Set_Num_Threads_Local(1);
  const double peak = fma_peak_gflops();
  std::printf("FMA peak of one core, same run: %.1f GFLOP/s\n\n", peak);
  std::printf("| product | m × n × k | MKL GFLOP/s | ours GFLOP/s | ours / MKL | MKL %% of peak | ours %% of peak |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  std::mt19937 rng(0);
  std::uniform_real_distribution<float> uniform(-0.5f, 0.5f);
  for (int e : {32, 64, 128}) {
    const Shape shapes[] = {{"S = Q·Kᵀ (forward, backward)", 256, 256, e, false, true, 0.0f},
                            {"O += P·V (forward), dQ += dS·K", 256, e, 256, false, false, 1.0f},
                            {"dV += Pᵀ·dO, dK += dSᵀ·Q", 256, e, 256, true, false, 1.0f}};
    for (const Shape& s : shapes) {
      const int lda = s.a_transposed ? s.m : s.k, ldb = s.b_transposed ? s.k : s.n;
      std::vector<float> a(static_cast<size_t>(s.m) * s.k), b(static_cast<size_t>(s.n) * s.k),
          c(static_cast<size_t>(s.m) * s.n);
      for (auto* v : {&a, &b, &c}) {
        for (float& x : *v) x = uniform(rng);
      }
      const double flops = 2.0 * s.m * s.n * s.k;
      const int runs = static_cast<int>(1e9 / flops) + 1;
      const double mkl = best_seconds_per_call([&] { mkl_product(s, a.data(), lda, b.data(), ldb, c.data()); }, runs);
      const double ours = best_seconds_per_call(
          [&] {
            selfattn::cpu::avx2::gemm(s.m, s.n, s.k, a.data(), lda, s.a_transposed, b.data(), ldb, s.b_transposed,
                                      c.data(), s.n, 1.0f, s.beta);
          },
          runs);
      const double mkl_rate = flops / mkl / 1e9, our_rate = flops / ours / 1e9;
      std::printf("| %s, E = %d | %d × %d × %d | %.1f | %.1f | %.2f× | %.0f%% | %.0f%% |\n", s.name, e, s.m, s.n, s.k,
                  mkl_rate, our_rate, our_rate / mkl_rate, 100 * mkl_rate / peak, 100 * our_rate / peak);
    }
  }
  return 0;
}
