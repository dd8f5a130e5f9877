// Marks the small helpers that both the CPU kernels and the CUDA kernels call.
#pragma once

#if defined(__CUDACC__)
#define SELFATTN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SELFATTN_HOST_DEVICE inline
#endif
