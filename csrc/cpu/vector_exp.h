// exp for `#pragma omp simd` loops. GCC vectorises calls to exp only when
// glibc's headers mark it as having a vector variant (libmvec), and they do
// that only under -ffast-math, which the kernels cannot use: masked scores
// are -inf and NaNs must propagate. Declaring the vector variants here gets
// the same 4-wide (float) and 2-wide (double) calls with IEEE semantics;
// libmvec handles infinities and NaNs exactly like the scalar functions.
#pragma once

#include <cmath>

#if defined(__GLIBC__) && defined(__GNUC__) && !defined(__clang__)
extern "C" float expf(float) noexcept __attribute__((simd("notinbranch")));
extern "C" double exp(double) noexcept __attribute__((simd("notinbranch")));
#endif

namespace selfattn::cpu {

inline float vector_exp(float x) { return ::expf(x); }
inline double vector_exp(double x) { return ::exp(x); }

}  // namespace selfattn::cpu
