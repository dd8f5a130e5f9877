"""Finds and loads the compiled op library (torch_selfattn/_C*.so)."""
import glob
import importlib.machinery
import os

import torch

from torch_selfattn import _build_record

_HERE = os.path.dirname(os.path.abspath(__file__))

# The dtypes the kernels compute in.
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _has_kernel(device_type):
    """Whether the loaded library has kernels for tensors of this device type."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key("selfattn::attention_forward", key)


def _library_path():
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidates = glob.glob(os.path.join(_HERE, "_C" + suffix))
        if candidates:
            return candidates[0]
    raise ImportError(
        "torch_selfattn: the compiled library _C is missing from "
        f"{_HERE}. Build it first: pip install --no-build-isolation -e ."
    )


def load_library():
    torch.ops.load_library(_library_path())


def build_info():
    """What the loaded library was built with: its path, the backends that
    have kernels for the core ops, the CPU kernels' tile products ("blas":
    the BLAS that PyTorch links, or "portable"), the x86-64 level of their
    vectorised loops, and how they multiply bfloat16 ("matrix units (AMX)"
    or "float products"), the torch version it was built against, and the
    GPU architectures of its CUDA kernels ([] without them)."""
    backends = [
        key
        for key in ("CPU", "CUDA", "Meta")
        if torch._C._dispatch_has_kernel_for_dispatch_key("selfattn::attention_forward", key)
    ]
    vector_loops, bf16_products = torch.ops.selfattn.cpu_kernel_paths()
    record = _build_record.read()
    return {
        "library": _library_path(),
        "backends": backends,
        "tile_gemm": torch.ops.selfattn.cpu_tile_gemm(),
        "vector_loops": vector_loops,
        "bf16_products": bf16_products,
        "built_with_torch": record.get("torch_version"),
        "cuda_archs": _build_record.cuda_archs(record) if "CUDA" in backends else [],
    }
