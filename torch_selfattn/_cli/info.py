"""`python -m torch_selfattn info`: what this installation was built with and
what it runs on."""
import importlib.metadata
import os
import platform

import torch

from torch_selfattn._library import build_info


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report():
    """The lines that `info` prints."""
    from torch_selfattn import __version__

    info = build_info()
    archs = info["cuda_archs"]
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none visible"
    tile_gemm = {"avx2": "avx2 (our own AVX2 products)", "blas": "blas (the BLAS PyTorch links)",
                 "portable": "portable (our own loops)"}
    return [
        f"torch-selfattn {__version__}",
        f"  library        {info['library']}",
        f"  built with     torch {info['built_with_torch']}",
        f"  kernels for    {', '.join(info['backends'])}",
        f"  CPU tiles      {tile_gemm.get(info['tile_gemm'], info['tile_gemm'])}",
        f"  CPU loops      {info['vector_loops']}; bfloat16 products on {info['bf16_products']}",
        f"  CUDA archs     {', '.join(archs) if archs else 'none (built without CUDA kernels)'}",
        f"versions         torch {torch.__version__}, Python {platform.python_version()}, "
        f"transformers {_version('transformers')}, matplotlib {_version('matplotlib')}, tqdm {_version('tqdm')}",
        f"CPU              {cpu_model()} ({platform.machine()}), {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads",
        f"CPU ISA in use   {torch.backends.cpu.get_cpu_capability()} in PyTorch and its BLAS"
        f"{' (our tile products)' if info['tile_gemm'] == 'blas' else ''}; "
        f"{info['vector_loops']} in our vectorised loops"
        f"{' and tile products' if info['tile_gemm'] == 'avx2' else ''}",
        f"CUDA             torch built with {torch.version.cuda or 'no CUDA'}; GPU: {gpu}",
    ]
