"""Build torch-selfattn.

The CPU sources are always built. The CUDA sources are added when the installed
torch was built with CUDA and nvcc is found, so one setup.py makes both the CPU
build (CI, laptops) and the GPU build (the device machine).
"""
import glob
import os
import platform
import shutil

from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")
# The nvcc architecture flags of the last build, one a line, for
# `python -m torch_selfattn info`; absent after a CPU-only build.
CUDA_ARCH_RECORD = os.path.join(ROOT, "torch_selfattn", "_cuda_arch_flags.txt")


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(CSRC, pattern), recursive=True))


def cuda_available():
    import torch

    return torch.version.cuda is not None and (
        cpp_extension.CUDA_HOME is not None or shutil.which("nvcc") is not None
    )


def extension():
    # -fno-math-errno lets `#pragma omp simd` loops call the vector exp of
    # glibc's libmvec (csrc/cpu/vector_exp.h); NaN and infinity semantics are
    # kept (no -ffast-math).
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    link_flags = ["-fopenmp"] + (["-lmvec"] if platform.libc_ver()[0] == "glibc" else [])
    # csrc/cuda/ holds everything that needs the CUDA toolkit, .cpp files included.
    cpp_sources = [s for s in sources("**/*.cpp") if not s.startswith("csrc/cuda/")]
    cuda_sources = sources("cuda/**/*.cu") + sources("cuda/**/*.cpp")
    include_dirs = [CSRC]
    if cuda_sources and cuda_available() and os.environ.get("TORCH_SELFATTN_CPU_ONLY") != "1":
        arch_flags = os.environ.get(
            "TORCH_SELFATTN_CUDA_ARCH_FLAGS",
            "-gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90a,code=sm_90a",
        ).split()
        with open(CUDA_ARCH_RECORD, "w") as f:
            f.write("\n".join(arch_flags) + "\n")
        # The Hopper kernels need the arch-specific sm_90a code (wgmma,
        # setmaxnreg); the host side takes them only when it was built.
        hopper_flags = ["-DTORCH_SELFATTN_SM90A=1"] if any("90a" in flag for flag in arch_flags) else []
        # More nvcc flags for a diagnostic build, e.g. -DTORCH_SELFATTN_DEBUG_HANGS
        # (csrc/cuda/hopper/barrier.cuh); benchmarks/gpu_check.sh sets it.
        extra_nvcc_flags = os.environ.get("TORCH_SELFATTN_NVCC_FLAGS", "").split()
        return cpp_extension.CUDAExtension(
            "torch_selfattn._C",
            cpp_sources + cuda_sources,
            include_dirs=include_dirs,
            define_macros=[("TORCH_SELFATTN_WITH_CUDA", "1")],
            extra_compile_args={
                "cxx": cxx_flags,
                "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"] + arch_flags + hopper_flags
                + extra_nvcc_flags,
            },
            extra_link_args=link_flags,
        )
    if os.path.exists(CUDA_ARCH_RECORD):
        os.remove(CUDA_ARCH_RECORD)
    return cpp_extension.CppExtension(
        "torch_selfattn._C",
        cpp_sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_flags,
    )


setup(
    name="torch-selfattn",
    version="0.1.0",
    description="Fused, memory-efficient scaled dot-product attention for PyTorch (CPU and CUDA)",
    packages=find_packages(include=["torch_selfattn", "torch_selfattn.*"]),
    package_data={"torch_selfattn": ["data/*", "_cuda_arch_flags.txt"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    install_requires=["torch>=2.4"],
    extras_require={
        "hf": ["transformers>=5.0"],
        "plot": ["matplotlib"],
        "demo": ["tqdm", "matplotlib"],
        "test": ["pytest", "hypothesis", "numpy", "transformers>=5.0", "tqdm", "matplotlib"],
    },
    python_requires=">=3.9",
)
