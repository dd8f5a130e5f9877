// Which compilation pass may use Hopper's own instructions. wgmma and
// setmaxnreg exist only in the arch-specific sm_90a target
// (-gencode=arch=compute_90a,code=sm_90a), whose device pass defines
// __CUDA_ARCH_FEAT_SM90_ALL; TMA and mbarrier transaction counts are plain
// sm_90. The same sources are also compiled for sm_80 and for the host, so
// the kernels' bodies are built only where this macro is set and trap
// elsewhere; the host never launches them on another architecture
// (hopper/dispatch.cu checks the device, and that the build had sm_90a).
#pragma once

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SELFATTN_HOPPER_DEVICE_PASS 1
#endif
