// Switches that make the kernels take their fallback paths on a machine
// where the fast path would run, so that tests can check both there:
//   TORCH_SELFATTN_PORTABLE_GEMM=1   portable loops instead of BLAS
//   TORCH_SELFATTN_NO_MATRIX_UNITS=1 bfloat16 through float products, not AMX
//   TORCH_SELFATTN_NO_TILE_STORE=1   the backward recomputes P and dP instead
//                                    of keeping them between its sweeps
#pragma once

namespace selfattn {

// Whether environment variable `name` is "1". Callers read it once into a
// static, so the kernels keep no mutable global state.
bool env_flag(const char* name);

}  // namespace selfattn
