// Warpgroup matrix products (wgmma): the four warps of a warpgroup multiply
// a 64×16 A by a 16×N B into 64×N float accumulators, asynchronously. A comes
// from shared memory (a descriptor, see swizzled_tile.cuh) or from
// registers; B always from shared memory. The accumulators are laid out as
// mma.sync's C fragments, one 16-row slice per warp, N / 8 blocks of four
// floats per thread: with g = lane / 4 and t = lane % 4, block j holds
// (row g, columns 8j + 2t, 8j + 2t + 1) then (row g + 8, the same columns).
// A in registers has mma.sync's m16n8k16 A-fragment layout, so a product's
// accumulators, rounded to 16 bits, are the A operand of the next one.
//
// The protocol: fence (orders earlier register writes before the products
// read them), issue products, commit them as a group, wait for the group;
// until the wait, neither the accumulators nor the A registers may be
// touched. hold() pins registers at the wait for the compiler, which does not
// know that the products run on after their instructions.
//
// Device code for sm_90a only (see arch.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace selfattn::cuda::hopper {

__device__ __forceinline__ void warpgroup_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }

__device__ __forceinline__ void commit_products() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }

// Waits until at most `pending` committed groups are still running.
template <int pending>
__device__ __forceinline__ void wait_products() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(pending) : "memory");
}

// Keeps the compiler from moving reads or writes of these registers across
// this point, nor giving them to other values before it.
__device__ __forceinline__ void hold_register(float& r) { asm volatile("" : "+f"(r)::"memory"); }
__device__ __forceinline__ void hold_register(uint32_t& r) { asm volatile("" : "+r"(r)::"memory"); }

template <typename R, int kBlocks>
__device__ __forceinline__ void hold(R (&r)[kBlocks][4]) {
#pragma unroll
  for (int j = 0; j < kBlocks; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) hold_register(r[j][e]);
  }
}

// The accumulator operands of one product, N / 2 floats.
#define SELFATTN_WGMMA_D_REGS_64                                                                                  \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define SELFATTN_WGMMA_D_REGS_128                                                                                 \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, " \
  "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define SELFATTN_WGMMA_D_BLOCK(d, j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define SELFATTN_WGMMA_D_4_BLOCKS(d, j) \
  SELFATTN_WGMMA_D_BLOCK(d, j), SELFATTN_WGMMA_D_BLOCK(d, j + 1), SELFATTN_WGMMA_D_BLOCK(d, j + 2), SELFATTN_WGMMA_D_BLOCK(d, j + 3)
#define SELFATTN_WGMMA_D_64(d) SELFATTN_WGMMA_D_4_BLOCKS(d, 0), SELFATTN_WGMMA_D_4_BLOCKS(d, 4)
#define SELFATTN_WGMMA_D_128(d) SELFATTN_WGMMA_D_64(d), SELFATTN_WGMMA_D_4_BLOCKS(d, 8), SELFATTN_WGMMA_D_4_BLOCKS(d, 12)

// D (+)= A·B, A and B both K-major in shared memory. The operands after the
// N / 2 accumulators are numbered from A0 on: A's descriptor, B's, and
// whether to accumulate (false: D = A·B, which needs no zeroed D).
#define SELFATTN_WGMMA_SHARED_A(N, TYPE, A0, A1, A2)                                                        \
  asm volatile(                                                                                           \
      "{\n.reg .pred accumulate;\nsetp.ne.b32 accumulate, %" #A2 ", 0;\n"                                 \
      "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TYPE "." TYPE " " SELFATTN_WGMMA_D_REGS_##N       \
      ", %" #A0 ", %" #A1 ", accumulate, 1, 1, 0, 0;\n}\n"                                                \
      : SELFATTN_WGMMA_D_##N(d)                                                                           \
      : "l"(a_descriptor), "l"(b_descriptor), "r"(static_cast<uint32_t>(accumulate)))

// D += A·B, A in four registers, B N-major in shared memory (imm-trans-b 1).
#define SELFATTN_WGMMA_REGISTER_A(N, TYPE, A0, A1, A2, A3, A4)                                               \
  asm volatile("wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TYPE "." TYPE " " SELFATTN_WGMMA_D_REGS_##N \
               ", {%" #A0 ", %" #A1 ", %" #A2 ", %" #A3 "}, %" #A4 ", 1, 1, 1, 1;\n"                        \
               : SELFATTN_WGMMA_D_##N(d)                                                                   \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_descriptor))

// One m64nNk16 product D (+)= A·B with A (64×16) and B (16×N) K-major in
// shared memory: B's rows are its N columns, as K's rows are in Q·Kᵀ.
template <typename T, int N>
__device__ __forceinline__ void mma_shared_a(float (&d)[N / 8][4], uint64_t a_descriptor, uint64_t b_descriptor,
                                             bool accumulate) {
  static_assert(N == 64 || N == 128, "compiled for N = 64 and 128");
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    if constexpr (N == 64) {
      SELFATTN_WGMMA_SHARED_A(64, "bf16", 32, 33, 34);
    } else {
      SELFATTN_WGMMA_SHARED_A(128, "bf16", 64, 65, 66);
    }
  } else {
    if constexpr (N == 64) {
      SELFATTN_WGMMA_SHARED_A(64, "f16", 32, 33, 34);
    } else {
      SELFATTN_WGMMA_SHARED_A(128, "f16", 64, 65, 66);
    }
  }
}

// One m64nNk16 product D += A·B with A (64×16) in registers and B (16×N)
// N-major in shared memory: B's rows are its K, as V's are in P·V.
template <typename T, int N>
__device__ __forceinline__ void mma_register_a(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t b_descriptor) {
  static_assert(N == 64 || N == 128, "compiled for N = 64 and 128");
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    if constexpr (N == 64) {
      SELFATTN_WGMMA_REGISTER_A(64, "bf16", 32, 33, 34, 35, 36);
    } else {
      SELFATTN_WGMMA_REGISTER_A(128, "bf16", 64, 65, 66, 67, 68);
    }
  } else {
    if constexpr (N == 64) {
      SELFATTN_WGMMA_REGISTER_A(64, "f16", 32, 33, 34, 35, 36);
    } else {
      SELFATTN_WGMMA_REGISTER_A(128, "f16", 64, 65, 66, 67, 68);
    }
  }
}

#undef SELFATTN_WGMMA_SHARED_A
#undef SELFATTN_WGMMA_REGISTER_A
#undef SELFATTN_WGMMA_D_128
#undef SELFATTN_WGMMA_D_64
#undef SELFATTN_WGMMA_D_4_BLOCKS
#undef SELFATTN_WGMMA_D_BLOCK
#undef SELFATTN_WGMMA_D_REGS_128
#undef SELFATTN_WGMMA_D_REGS_64

}  // namespace selfattn::cuda::hopper
