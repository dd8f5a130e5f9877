// Compiles a function for AVX-512 with the BF16 extension, whatever the
// flags of the file: what every CPU with matrix units has. Callers check
// avx512::available() (softmax_avx512.h) before they call one.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#define SELFATTN_HAS_AVX512_TARGET 1
#define SELFATTN_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,fma")))
#else
#define SELFATTN_HAS_AVX512_TARGET 0
#define SELFATTN_AVX512
#endif
