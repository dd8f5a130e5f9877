// The float softmax loops written for AVX-512 with the BF16 extension
// (Intel Xeon since Cooper Lake, AMD Zen 4), which every CPU with matrix
// units has. vector_ops.cpp calls them where the CPU has the extensions and
// the portable loops elsewhere; the two give the same values (see
// softmax_avx512.cpp).
#pragma once

#include <cstdint>

namespace selfattn::cpu::avx512 {

// Whether this CPU runs the functions below.
bool available();

// As the functions of the same names in vector_ops.h.
float max_element(const float* x, int64_t n);
float exp_affine(float* x, int64_t n, float scale, float shift, float factor);
float exp_scaled_to_bfloat16(const float* x, int64_t n, float factor, float shift, uint16_t* y);
void round_to_bfloat16(const float* x, uint16_t* y, int64_t n);
void widen_half(const uint16_t* x, float* y, int64_t n);

}  // namespace selfattn::cpu::avx512
