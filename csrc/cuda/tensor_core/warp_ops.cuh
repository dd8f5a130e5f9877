// The warp-level instructions the tensor-core kernels are built from, each
// behind a name: 16-byte asynchronous copies into shared memory (cp.async),
// 8×8 matrix loads from shared memory (ldmatrix) and the m16n8k16 matrix
// product (mma.sync). Fragment layouts, with g = lane / 4 and t = lane % 4:
//   A (16×16, row-major): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B (16×8):             b0 = (2t..2t+1, g), b1 = (2t+8..2t+9, g)
//   C (16×8, float):      c0,c1 = (g, 2t..2t+1), c2,c3 = (g+8, 2t..2t+1)
// C's layout is A's, so a product's accumulators become the A operand of the
// next product without a trip through shared memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace selfattn::cuda::tc {

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Copies `src_bytes` (16, or 0) bytes from global memory to the 16 bytes at
// shared address `smem` without passing through registers, and zero-fills
// the rest: how rows and columns past a tensor's end become zeros.
__device__ __forceinline__ void copy_16_bytes_async(uint32_t smem, const void* gmem, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem), "r"(src_bytes));
}

__device__ __forceinline__ void commit_async_copies() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most `pending` committed groups of copies are in flight.
template <int pending>
__device__ __forceinline__ void wait_async_copies() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(pending));
}

// Four 8×8 matrices of 16-bit elements; lane l gives the shared-memory
// address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void load_matrix_x4(uint32_t (&r)[4], uint32_t row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(row_address));
}

// The same, each matrix transposed on the way.
__device__ __forceinline__ void load_matrix_x4_transposed(uint32_t (&r)[4], uint32_t row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(row_address));
}

// c += a·b for one 16×8×16 tile, fp32 accumulators.
template <typename T>
__device__ __forceinline__ void mma_16x8x16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// c0 += a·b and c1 += a·b' for the two n-blocks whose B fragments one
// x4 ldmatrix brought: b[0], b[1] for c0 and b[2], b[3] for c1.
template <typename T>
__device__ __forceinline__ void mma_16x16x16(float (&c0)[4], float (&c1)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[4]) {
  mma_16x8x16<T>(c0, a, b[0], b[1]);
  mma_16x8x16<T>(c1, a, b[2], b[3]);
}

// Two floats as one register of two 16-bit elements (the lower in the low half).
template <typename T>
__device__ __forceinline__ uint32_t pack_pair(float lo, float hi) {
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
}

// Two 16-bit ones, as pack_pair<T>(1, 1) gives them.
template <typename T>
__device__ __forceinline__ constexpr uint32_t ones_pair() {
  return std::is_same_v<T, __half> ? 0x3C003C00u : 0x3F803F80u;
}

// Sum and max over the four lanes that share a row of a C fragment.
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x;
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
  return x;
}

// Accumulator blocks 2kk and 2kk + 1 of a row pair, rounded to T: the
// m16n8k16 A fragment of k-step kk (C's layout is A's).
template <typename T, int kBlocks>
__device__ __forceinline__ void accumulators_as_a(const float (&c)[kBlocks][4], int kk, uint32_t (&a)[4]) {
  a[0] = pack_pair<T>(c[2 * kk][0], c[2 * kk][1]);
  a[1] = pack_pair<T>(c[2 * kk][2], c[2 * kk][3]);
  a[2] = pack_pair<T>(c[2 * kk + 1][0], c[2 * kk + 1][1]);
  a[3] = pack_pair<T>(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

}  // namespace selfattn::cuda::tc
