// The element-wise loops of the softmax and of the score gradient, on rows
// of float (or double) scores, and the row products of a decoding step on a
// paged cache. They are compiled once per x86-64 level
// (AVX-512, AVX2, baseline) and the widest the CPU supports is picked when
// the library loads (vector_ops.cpp), so one build runs fast on new CPUs and
// correctly on old ones.
#pragma once

#include <cstdint>

namespace selfattn::cpu {

// The x86-64 level whose clones run on this CPU: "x86-64-v4 (AVX-512)",
// "x86-64-v3 (AVX2)", or "baseline".
const char* vector_ops_level();

// Largest of x[0, n): NaN if any element is NaN (so that a NaN score poisons
// its row, as in PyTorch), −inf if n = 0.
float max_element(const float* x, int64_t n);
double max_element(const double* x, int64_t n);

// x ← exp(x·scale − shift)·factor; returns Σ exp(x·scale − shift) before the
// factor. exp_shifted is scale = 1.
float exp_affine(float* x, int64_t n, float scale, float shift, float factor);
double exp_affine(double* x, int64_t n, double scale, double shift, double factor);
float exp_shifted(float* x, int64_t n, float shift, float factor);
double exp_shifted(double* x, int64_t n, double shift, double factor);

// y ← bfloat16(exp(x·factor − shift)) as raw 16-bit patterns; returns
// Σ exp(x·factor − shift) of the float values. The softmax step of the
// bfloat16 forward in one pass (the scale, the exp and the rounding).
float exp_scaled_to_bfloat16(const float* x, int64_t n, float factor, float shift, uint16_t* y);

// x ← x·factor
void scale(float* x, int64_t n, float factor);
void scale(double* x, int64_t n, double factor);

// x ← x ∘ y
void multiply(float* x, const float* y, int64_t n);
void multiply(double* x, const double* y, int64_t n);

// The products of a decoding step's few query rows with a block of keys
// (a matrix times a short, wide matrix), `count` key rows of n elements,
// `ld` apart.
//   dot_rows: out[r·ldo + j] = factor·Σ x_r ∘ rows_j, for xrows rows x_r, ldx apart;
//   add_rows: y_r ← y_r + Σ_j a[r·lda + j]·rows_j, for yrows rows y_r, ldy apart.
void dot_rows(const float* x, int64_t ldx, int64_t xrows, const float* rows, int64_t ld, int64_t count, int64_t n,
              float factor, float* out, int64_t ldo);
void dot_rows(const double* x, int64_t ldx, int64_t xrows, const double* rows, int64_t ld, int64_t count, int64_t n,
              double factor, double* out, int64_t ldo);
void add_rows(float* y, int64_t ldy, int64_t yrows, const float* rows, int64_t ld, int64_t count, int64_t n,
              const float* a, int64_t lda);
void add_rows(double* y, int64_t ldy, int64_t yrows, const double* rows, int64_t ld, int64_t count, int64_t n,
              const double* a, int64_t lda);

// x ← p ∘ (x − d): turns dP into the score gradient dS. With p_factor ≠ 1,
// p ← p·p_factor first, in the same pass: the renormalisation of a kept P.
void score_gradient(float* p, float* x, int64_t n, float d, float p_factor = 1);
void score_gradient(double* p, double* x, int64_t n, double d, double p_factor = 1);

// Adds Σ p and Σ p∘dp to the two sums, accumulating in double.
void add_row_sums(const float* p, const float* dp, int64_t n, double& prob_sum, double& weighted_sum);
void add_row_sums(const double* p, const double* dp, int64_t n, double& prob_sum, double& weighted_sum);

// Rounds to bfloat16 (nearest even; NaN stays NaN), as raw 16-bit patterns.
void round_to_bfloat16(const float* x, uint16_t* y, int64_t n);

// The exact float values of raw bfloat16 patterns.
void widen_bfloat16(const uint16_t* x, float* y, int64_t n);

// The exact float values of raw float16 patterns.
void widen_half(const uint16_t* x, float* y, int64_t n);

}  // namespace selfattn::cpu
