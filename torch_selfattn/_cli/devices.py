"""The device a command runs on, checked before any work starts."""
import torch

from torch_selfattn._library import build_info


def pick_device(requested):
    """The device to run on; ValueError where torch-selfattn has no kernels for it."""
    backends = build_info()["backends"]
    cuda_ok = "CUDA" in backends and torch.cuda.is_available()
    if requested == "auto":
        return torch.device("cuda" if cuda_ok else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"unknown device {requested!r}; use cpu, cuda or auto") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {requested!r}; use cpu, cuda or auto")
    if device.type == "cuda" and not cuda_ok:
        raise ValueError(f"--device {requested} needs a CUDA device and torch-selfattn built with CUDA kernels "
                         f"(this build has kernels for: {', '.join(backends)})")
    return device
