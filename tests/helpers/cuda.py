"""CUDA inputs and the condition under which the CUDA tests run.

Inputs are drawn in float64 on the CPU, so that their values do not depend on
the GPU, then moved to the device."""
import pytest
import torch

import torch_selfattn

DEVICE = "cuda"
HALF_DTYPES = [torch.float16, torch.bfloat16]
HALF_IDS = ["fp16", "bf16"]


def cuda_kernels_missing():
    """Why the CUDA tests cannot run here, or None when they can."""
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    if "CUDA" not in torch_selfattn.build_info()["backends"]:
        return "torch_selfattn was built without its CUDA kernels (build_info()['backends'] lacks 'CUDA')"
    return None


requires_cuda_kernels = pytest.mark.skipif(cuda_kernels_missing() is not None, reason=str(cuda_kernels_missing()))
# The devices the `device` fixture (tests/conftest.py) runs a test on.
DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda_kernels)]


def cuda_randn(shape, dtype, g, layout="contiguous", device=DEVICE, requires_grad=True):
    """A random leaf on the device, drawn in float64 on the CPU (so that the
    values do not depend on the GPU) and laid out as asked:
    "contiguous"; "transposed", the (B, L, H, E) storage models pass, viewed
    as (B, H, L, E); "sliced_aligned", a slice with a 16-byte storage offset
    and padded rows (tensor-core path for fp16/bf16); "sliced_unaligned", the
    same with a 6-byte offset (rows not 16-byte aligned)."""
    shape = tuple(shape)
    if layout == "transposed":
        base = torch.randn(*shape[:-3], shape[-2], shape[-3], shape[-1], generator=g, dtype=torch.float64)
        t = base.to(device, dtype).transpose(-3, -2)
    elif layout.startswith("sliced"):
        pad = 8 if layout == "sliced_aligned" else 3
        base = torch.randn(*shape[:-1], shape[-1] + 2 * pad, generator=g, dtype=torch.float64)
        t = base.to(device, dtype)[..., pad : pad + shape[-1]]
    else:
        t = torch.randn(*shape, generator=g, dtype=torch.float64).to(device, dtype)
    assert t.shape == shape
    return t.detach().requires_grad_(requires_grad)


def cuda_qkv(dtype, B=2, Hq=3, H=None, L=70, S=130, E=64, Ev=None, seed=0, layout="contiguous", device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    H = Hq if H is None else H
    Ev = E if Ev is None else Ev
    return tuple(
        cuda_randn(shape, dtype, g, layout=layout, device=device)
        for shape in ((B, Hq, L, E), (B, H, S, E), (B, H, S, Ev))
    )


def make_mask(kind, shape, dtype, g):
    """A random mask on DEVICE: "bool" (every row keeps a key), or float in
    the query's dtype ("query_dtype_grad", requiring grad) or float32."""
    if kind == "bool":
        mask = torch.rand(shape, generator=g) > 0.3
        mask[..., 0] = True  # every row keeps a key; fully masked rows have their own test
        return mask.to(DEVICE)
    mask_dtype = torch.float32 if kind == "float32" else dtype
    mask = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(DEVICE, mask_dtype)
    return mask.requires_grad_(kind.endswith("_grad"))


def capture(step):
    """Warms step up on a side stream (as torch.cuda.graph requires), then
    captures one call of it; returns the graph and the call's static outputs."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step()
    return graph, outputs
