"""Build torch-selfattn's C++ library, torch_selfattn/_C (the metadata is in
pyproject.toml).

It prints what it builds, and why:
- the CPU kernels, always;
- the CUDA kernels too, when the installed torch was built with CUDA and nvcc
  is found (CUDA_HOME, or PATH). Torch with CUDA but no nvcc gives a CPU-only
  build and a loud warning; TORCH_SELFATTN_REQUIRE_CUDA=1 makes any CPU-only
  build an error. A CUDA build also needs the CUTLASS/CuTe headers of the
  pinned nvidia-cutlass package (the Hopper kernels are built on them); it
  stops with the pip command when they are missing. A CPU-only build never
  looks for them.

Environment:
  TORCH_SELFATTN_CUDA_ARCH_FLAGS  nvcc's -gencode flags (default: sm_80 and
                                  sm_90a, for A100 and H100/H200)
  TORCH_SELFATTN_CPU_ONLY=1       skip the CUDA sources even where they could build
  TORCH_SELFATTN_REQUIRE_CUDA=1   fail rather than build CPU-only
  TORCH_SELFATTN_CUTLASS_INCLUDE  a CUTLASS include directory (with cute/ and
                                  cutlass/) to use instead of the installed
                                  nvidia-cutlass package's
  TORCH_SELFATTN_DEBUG=1          keep debug info (release builds strip it: it
                                  is 24 of the library's 25 MB)
  MAX_JOBS                        parallel compile jobs

The library is compiled against the installed torch's headers and calls
internal ATen functions, so it only loads with that same torch: build with
--no-build-isolation (pyproject.toml says why). The torch version and the
nvcc flags are recorded in torch_selfattn/_build_record.json, which the
import checks and build_info() reports.
"""
import glob
import json
import os
import platform
import shutil
import sys

from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")
BUILD_RECORD = os.path.join(ROOT, "torch_selfattn", "_build_record.json")
DEFAULT_CUDA_ARCH_FLAGS = "-gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90a,code=sm_90a"
# The CUTLASS release whose CuTe headers the Hopper kernels are written and
# checked against; .ci/run installs the same pin.
CUTLASS_REQUIREMENT = "nvidia-cutlass==4.2.0.0"


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(CSRC, pattern), recursive=True))


def env_flag(name):
    return os.environ.get(name) == "1"


def find_nvcc():
    if cpp_extension.CUDA_HOME is not None:
        nvcc = os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
        if os.path.exists(nvcc):
            return nvcc
    return shutil.which("nvcc")


def warn_loudly(message):
    bar = "!" * 78
    print(f"\n{bar}\nWARNING: {message}\n{bar}\n", file=sys.stderr, flush=True)


def cuda_plan():
    """(whether to build the CUDA kernels, why), from the installed torch,
    nvcc and the environment. SystemExit where TORCH_SELFATTN_REQUIRE_CUDA=1
    and they cannot be built."""
    import torch

    nvcc = find_nvcc()
    if env_flag("TORCH_SELFATTN_CPU_ONLY"):
        use_cuda, why = False, "TORCH_SELFATTN_CPU_ONLY=1"
    elif torch.version.cuda is None:
        use_cuda, why = False, f"torch {torch.__version__} was built without CUDA"
    elif nvcc is None:
        use_cuda, why = False, (
            f"torch {torch.__version__} has CUDA {torch.version.cuda}, but nvcc was not found (set CUDA_HOME "
            "or put nvcc on PATH)")
        if not env_flag("TORCH_SELFATTN_REQUIRE_CUDA"):
            warn_loudly(f"{why}. Building the CPU kernels only: CUDA tensors will find no kernel. "
                        "TORCH_SELFATTN_REQUIRE_CUDA=1 makes this an error.")
    else:
        use_cuda, why = True, f"torch {torch.__version__} has CUDA {torch.version.cuda}; nvcc is {nvcc}"
    if not use_cuda and env_flag("TORCH_SELFATTN_REQUIRE_CUDA"):
        raise SystemExit(f"error: TORCH_SELFATTN_REQUIRE_CUDA=1, but the CUDA kernels cannot be built: {why}")
    return use_cuda, why


def cutlass_include_dir():
    """The CUTLASS include directory for a CUDA build: TORCH_SELFATTN_CUTLASS_INCLUDE,
    else the installed nvidia-cutlass package's (cutlass_library/source/include).
    SystemExit, naming the pip command, when neither has CuTe's headers."""
    override = os.environ.get("TORCH_SELFATTN_CUTLASS_INCLUDE")
    if override:
        candidates, where = [override], f"TORCH_SELFATTN_CUTLASS_INCLUDE={override}"
    else:
        try:
            import cutlass_library
        except ImportError:
            cutlass_library = None
        candidates = [] if cutlass_library is None else [
            os.path.join(os.path.dirname(cutlass_library.__file__), "source", "include")]
        where = "the installed nvidia-cutlass package" if candidates else "no nvidia-cutlass package is installed"
    for path in candidates:
        if os.path.exists(os.path.join(path, "cute", "tensor.hpp")):
            return path
    raise SystemExit(
        f"error: the CUDA kernels need the CUTLASS/CuTe headers, and none were found ({where}). "
        f"Install them with: pip install {CUTLASS_REQUIREMENT}  (or point TORCH_SELFATTN_CUTLASS_INCLUDE at a "
        "CUTLASS include directory), or build the CPU kernels only with TORCH_SELFATTN_CPU_ONLY=1.")


def extension(use_cuda, cuda_arch_flags, debug):
    # -fno-math-errno lets `#pragma omp simd` loops call the vector exp of
    # glibc's libmvec (csrc/cpu/vector_exp.h); NaN and infinity semantics are
    # kept (no -ffast-math). -g0 comes after Python's own -g, and wins.
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-g" if debug else "-g0"]
    link_flags = ["-fopenmp"] + (["-lmvec"] if platform.libc_ver()[0] == "glibc" else [])
    link_flags += [] if debug else ["-Wl,--strip-debug"]
    # csrc/cuda/ holds everything that needs the CUDA toolkit, .cpp files included.
    cpp_sources = [s for s in sources("**/*.cpp") if not s.startswith("csrc/cuda/")]
    include_dirs = [CSRC, os.path.join(CSRC, "include")]
    if not use_cuda:
        return cpp_extension.CppExtension(
            "torch_selfattn._C", cpp_sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags,
        )
    # The Hopper kernels need the arch-specific sm_90a code (wgmma,
    # setmaxnreg); the host side takes them only when it was built.
    hopper_flags = ["-DTORCH_SELFATTN_SM90A=1"] if any("90a" in flag for flag in cuda_arch_flags) else []
    # CuTe calls constexpr host functions from device code.
    nvcc_flags = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"]
    nvcc_flags += ["-g"] if debug else []
    # CuTe's headers for the .cu files only (-isystem: its warnings are not ours).
    nvcc_flags += ["-isystem", cutlass_include_dir()]
    # More nvcc flags for a diagnostic build, e.g. -DTORCH_SELFATTN_DEBUG_HANGS
    # (csrc/cuda/hopper/barrier.cuh); benchmarks/gpu_check.sh sets it.
    nvcc_flags += os.environ.get("TORCH_SELFATTN_NVCC_FLAGS", "").split()
    return cpp_extension.CUDAExtension(
        "torch_selfattn._C",
        cpp_sources + sources("cuda/**/*.cu") + sources("cuda/**/*.cpp"),
        include_dirs=include_dirs,
        define_macros=[("TORCH_SELFATTN_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags + cuda_arch_flags + hopper_flags},
        extra_link_args=link_flags,
    )


def write_build_record(cuda_arch_flags, debug):
    import torch

    record = {
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "cuda_arch_flags": cuda_arch_flags,
        "debug_info": debug,
    }
    with open(BUILD_RECORD, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")


def main():
    import torch

    use_cuda, why = cuda_plan()
    debug = env_flag("TORCH_SELFATTN_DEBUG")
    cuda_arch_flags = []
    if use_cuda:
        cuda_arch_flags = os.environ.get("TORCH_SELFATTN_CUDA_ARCH_FLAGS", DEFAULT_CUDA_ARCH_FLAGS).split()
    kernels = f"CPU and CUDA kernels ({' '.join(cuda_arch_flags)})" if use_cuda else "CPU kernels only"
    print(f"torch-selfattn: building the {kernels} against torch {torch.__version__}: {why}. "
          f"Debug info: {'kept (TORCH_SELFATTN_DEBUG=1)' if debug else 'stripped'}.", file=sys.stderr, flush=True)
    write_build_record(cuda_arch_flags, debug)
    setup(
        ext_modules=[extension(use_cuda, cuda_arch_flags, debug)],
        cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
        # The demo's 384 KB text goes beside the environment's other shared
        # data, not into the import package; torch_selfattn/demo/text.py finds it.
        data_files=[("share/torch-selfattn", ["data/kjv_genesis_exodus.txt", "data/README.md"])],
    )


# setuptools runs this file as __main__; tests import it to check cuda_plan().
if __name__ == "__main__":
    main()
