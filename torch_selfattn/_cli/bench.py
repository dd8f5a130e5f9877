"""`python -m torch_selfattn bench`: a quick table of torch-selfattn's speed
against PyTorch's SDPA on this machine, on the same inputs in one process.

The fuller CPU benchmark, with GFLOP/s against a measured matmul peak, is
benchmarks/bench_cpu.py in the repository.
"""
from dataclasses import dataclass

import torch

from torch_selfattn.functional import scaled_dot_product_attention
from torch_selfattn._cli.timing import median_seconds

# PyTorch's own function, whatever patch_sdpa has done to torch.nn.functional.
_pytorch_sdpa = torch._C._nn.scaled_dot_product_attention


@dataclass(frozen=True)
class Case:
    batch: int
    heads: int
    seq_len: int
    head_dim: int
    causal: bool
    dtype: torch.dtype

    @property
    def label(self):
        dtype = str(self.dtype).replace("torch.", "")
        return (f"B{self.batch} H{self.heads} L{self.seq_len} E{self.head_dim} {dtype}"
                f"{' causal' if self.causal else ''}")


def default_cases(seq_lens, dtypes):
    return [Case(1, 8, L, 64, causal, dtype) for dtype in dtypes for L in seq_lens for causal in (False, True)]


def _inputs(case, device):
    g = torch.Generator().manual_seed(0)
    shape = (case.batch, case.heads, case.seq_len, case.head_dim)
    q, k, v = (torch.randn(shape, generator=g).to(device, case.dtype).requires_grad_() for _ in range(3))
    return q, k, v, torch.randn(shape, generator=g).to(device, case.dtype)


def time_case(case, repeats, device):
    """Seconds of (ours, PyTorch's) forward and forward+backward, as two pairs."""
    q, k, v, grad = _inputs(case, device)

    def forward(sdpa):
        with torch.no_grad():
            sdpa(q, k, v, is_causal=case.causal)

    def forward_backward(sdpa):
        torch.autograd.grad(sdpa(q, k, v, is_causal=case.causal), (q, k, v), grad)

    ours, theirs = scaled_dot_product_attention, _pytorch_sdpa
    fwd = median_seconds([lambda: forward(ours), lambda: forward(theirs)], repeats, device)
    fwd_bwd = median_seconds([lambda: forward_backward(ours), lambda: forward_backward(theirs)], repeats, device)
    return fwd, fwd_bwd


def run(seq_lens=(256, 1024), dtypes=(torch.float32, torch.bfloat16), repeats=5, device="cpu", out=print):
    """Times every case and prints the table; returns the rows as
    (label, (ours_fwd, pytorch_fwd), (ours_fwd_bwd, pytorch_fwd_bwd))."""
    threads = torch.get_num_threads()
    threads = f", {threads} thread{'' if threads == 1 else 's'}" if torch.device(device).type == "cpu" else ""
    out(f"torch-selfattn vs PyTorch SDPA on {device}{threads}, median of {repeats} (ms); "
        "speed-up = PyTorch's time / ours (> 1: ours is faster)")
    out(f"{'case':34}{'fwd ours':>10}{'PyTorch':>10}{'speed-up':>10}{'fwd+bwd ours':>14}{'PyTorch':>10}{'speed-up':>10}")
    rows = []
    for case in default_cases(seq_lens, dtypes):
        fwd, fwd_bwd = time_case(case, repeats, device)
        rows.append((case.label, fwd, fwd_bwd))
        out(f"{case.label:34}{1e3 * fwd[0]:10.2f}{1e3 * fwd[1]:10.2f}{fwd[1] / fwd[0]:9.2f}x"
            f"{1e3 * fwd_bwd[0]:14.2f}{1e3 * fwd_bwd[1]:10.2f}{fwd_bwd[1] / fwd_bwd[0]:9.2f}x")
    return rows
