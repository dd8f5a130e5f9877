// The float softmax loops written for AVX2 with FMA (x86-64-v3: Intel since
// Haswell, AMD since Zen), for CPUs without softmax_avx512.h's extensions.
// vector_ops.cpp calls them where the CPU has AVX2 and no AVX-512 BF16; the
// values are those of the portable loops (vector_exp2 in vector_exp.h).
#pragma once

#include <cstdint>

namespace selfattn::cpu::avx2 {

// Whether this CPU runs the functions below.
bool available();

// As the functions of the same names in vector_ops.h.
float max_element(const float* x, int64_t n);
float exp_affine(float* x, int64_t n, float scale, float shift, float factor);
void widen_half(const uint16_t* x, float* y, int64_t n);

}  // namespace selfattn::cpu::avx2
