"""What setup.py recorded about the build in _build_record.json, and the
check that the installed torch is the one the library was built against.

The library is compiled against one torch's headers and calls internal ATen
functions, so with another torch it fails to load with undefined symbols, or
worse, loads and misbehaves. The import checks the version first."""
import json
import os
import re

import torch

RECORD_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_build_record.json")


def read(path=RECORD_PATH):
    """The record as a dict: torch_version, torch_cuda_version,
    cuda_arch_flags and debug_info; {} for a library built without one."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def _release(version):
    # "2.13.0+cpu" and "2.13.0+cu128" share the C++ ABI of release 2.13.0.
    return version.split("+")[0]


def check_torch_version(record, installed=None):
    """ImportError when the library was built against another torch release
    than the installed one."""
    installed = torch.__version__ if installed is None else installed
    built = record.get("torch_version")
    if built is not None and _release(built) != _release(installed):
        raise ImportError(
            f"torch_selfattn was built against torch {built}, but torch {installed} is installed, and its "
            "compiled library only works with the torch it was built against. Rebuild it against the installed "
            "torch: `pip install --no-build-isolation --no-deps --force-reinstall .` in its source tree (or "
            "with the sdist's path instead of .), or `python setup.py build_ext --inplace` for an in-place "
            f"build. Or install torch=={_release(built)}.")


def cuda_archs(record):
    """The GPU architectures the CUDA kernels were compiled for (e.g. sm_80,
    sm_90a), from the recorded nvcc flags; [] for a CPU-only build."""
    return sorted(set(re.findall(r"code=\[?([a-z]+_\d+a?)", " ".join(record.get("cuda_arch_flags", [])))))
