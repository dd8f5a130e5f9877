"""torch-selfattn in a transformer block, next to PyTorch's own SDPA.

A pre-norm transformer block (causal multi-head self-attention with q/k/v/out
projections, then an MLP) runs forward and backward twice on the same weights
and inputs: once with torch.nn.functional.scaled_dot_product_attention routed
to torch-selfattn (``patch_sdpa``), once with PyTorch's SDPA. Both are compared
with a float64 run of the PyTorch block; then the attention alone and the whole
block are timed.

    python -m torch_selfattn.demo
    python -m torch_selfattn.demo --seq-len 1024 --batch 1 --repeats 3

Exit status: 0 when our errors against float64 are within 2x PyTorch's for the
output and every gradient shown, 1 otherwise.
"""
import argparse
import contextlib
import copy
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import torch_selfattn

# The parameters whose gradients are compared, besides the input's.
GRADIENT_PARAMS = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight")
TOLERANCE_FACTOR = 2.0


class Block(nn.Module):
    """Pre-norm transformer block. The attention calls
    F.scaled_dot_product_attention, so patch_sdpa() decides whose it is."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def attention(self, x):
        B, L, D = x.shape

        def split_heads(t):  # (B, L, D) -> (B, heads, L, D / heads), a strided view
            return t.view(B, L, self.heads, D // self.heads).transpose(1, 2)

        q, k, v = split_heads(self.q_proj(x)), split_heads(self.k_proj(x)), split_heads(self.v_proj(x))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(y.transpose(1, 2).reshape(B, L, D))

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m torch_selfattn.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--dim", type=int, default=256, help="model width; a multiple of --heads")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when torch-selfattn has CUDA kernels)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per measurement (the median is shown)")
    args = parser.parse_args(argv)
    if args.dim % args.heads:
        parser.error(f"--dim ({args.dim}) must be a multiple of --heads ({args.heads})")
    if min(args.batch, args.seq_len, args.dim, args.heads, args.repeats) < 1:
        parser.error("--batch, --seq-len, --dim, --heads and --repeats must be positive")
    try:
        args.device = pick_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    return args


def pick_device(requested):
    """The device to run on; ValueError where torch-selfattn has no kernels for it."""
    backends = torch_selfattn.build_info()["backends"]
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


def plural(n, noun):
    return f"{n} {noun}{'' if n == 1 else 's'}"


def progress(message):
    print(f"-- {message}", flush=True)


def run_block(block, x, grad_output, ours):
    """One forward and backward; returns the output and the gradients of the
    input and of GRADIENT_PARAMS, keyed by name."""
    x = x.detach().requires_grad_()
    params = dict(block.named_parameters())
    leaves = [x] + [params[name] for name in GRADIENT_PARAMS]
    with torch_selfattn.patch_sdpa() if ours else contextlib.nullcontext():
        output = block(x)
        grads = torch.autograd.grad(output, leaves, grad_output)
    names = ["output", "grad input"] + [f"grad {name}" for name in GRADIENT_PARAMS]
    return dict(zip(names, [output.detach()] + list(grads)))


def max_abs_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


def compare(ours, pytorch, reference):
    """Prints the agreement table; returns whether every tensor passes."""
    print("\nagreement, max abs difference (float32 runs; fp64 = the PyTorch block in float64)")
    print(f"  {'':26}{'ours vs PyTorch':>17}{'ours vs fp64':>15}{'PyTorch vs fp64':>18}")
    all_ok = True
    for name, ref in reference.items():
        ours_err, pytorch_err = max_abs_diff(ours[name], ref), max_abs_diff(pytorch[name], ref)
        # A floor of one float32 ulp of the largest value, for when PyTorch's error is ~0.
        floor = torch.finfo(torch.float32).eps * ref.abs().max().item()
        ok = ours_err <= TOLERANCE_FACTOR * pytorch_err + floor
        all_ok &= ok
        print(f"  {name:26}{max_abs_diff(ours[name], pytorch[name]):17.2e}{ours_err:15.2e}{pytorch_err:18.2e}"
              f"{'' if ok else '   <-- too far'}")
    verdict = "OK" if all_ok else "MISMATCH"
    print(f"\nverdict: {verdict} (our error vs float64 {'is' if all_ok else 'is NOT'} within "
          f"{TOLERANCE_FACTOR:g}x PyTorch's for the output and every gradient)")
    return all_ok


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fns, repeats, device):
    """Median time of each function; the runs are interleaved so that clock
    drifts hit all of them alike."""
    for fn in fns:
        fn()  # warm-up
    samples = [[] for _ in fns]
    for _ in range(repeats):
        for fn, times in zip(fns, samples):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - start)
    return [statistics.median(times) for times in samples]


def attention_workloads(args, device):
    """Forward and forward+backward of the block's attention alone, for a
    given SDPA function."""
    shape = (args.batch, args.heads, args.seq_len, args.dim // args.heads)
    q, k, v = (torch.randn(shape, device=device, requires_grad=True) for _ in range(3))
    grad = torch.randn(shape, device=device)

    def forward(sdpa):
        with torch.no_grad():
            sdpa(q, k, v, is_causal=True)

    def forward_backward(sdpa):
        torch.autograd.grad(sdpa(q, k, v, is_causal=True), (q, k, v), grad)

    return forward, forward_backward


def block_workloads(block, x, grad_output):
    def forward(ours):
        with torch.no_grad(), torch_selfattn.patch_sdpa() if ours else contextlib.nullcontext():
            block(x)

    def forward_backward(ours):
        run_block(block, x, grad_output, ours)

    return forward, forward_backward


def attention_flops(args):
    """FlashAttention's count, 4·B·H·L·S·E, halved for causal attention."""
    head_dim = args.dim // args.heads
    return 4 * args.batch * args.heads * args.seq_len * args.seq_len * head_dim / 2


def timings(args, device, block, x, grad_output):
    ours, pytorch = torch_selfattn.scaled_dot_product_attention, F.scaled_dot_product_attention
    attn_fwd, attn_fwd_bwd = attention_workloads(args, device)
    block_fwd, block_fwd_bwd = block_workloads(block, x, grad_output)
    flops = attention_flops(args)
    rows = [  # (label, ours, PyTorch's, FLOPs or None)
        ("attention forward", lambda: attn_fwd(ours), lambda: attn_fwd(pytorch), flops),
        ("attention fwd+bwd", lambda: attn_fwd_bwd(ours), lambda: attn_fwd_bwd(pytorch), 3.5 * flops),
        ("block forward", lambda: block_fwd(True), lambda: block_fwd(False), None),
        ("block fwd+bwd", lambda: block_fwd_bwd(True), lambda: block_fwd_bwd(False), None),
    ]
    results = []
    for label, ours_fn, pytorch_fn, row_flops in rows:
        progress(f"timing {label} ({plural(args.repeats, 'repeat')})")
        results.append((label, *median_seconds([ours_fn, pytorch_fn], args.repeats, device), row_flops))
    return results


def print_timings(results, repeats):
    def gflops(row_flops, seconds):
        return f"{row_flops / seconds / 1e9:.1f}" if row_flops else "-"

    print(f"\ntimings, median of {repeats} (ms); GFLOP/s of the attention (backward = 2.5x forward)")
    print(f"  {'':20}{'ours':>9}{'PyTorch':>9}{'speed-up':>10}{'ours GFLOP/s':>14}{'PyTorch GFLOP/s':>17}")
    for label, ours_s, pytorch_s, row_flops in results:
        print(f"  {label:20}{1e3 * ours_s:9.2f}{1e3 * pytorch_s:9.2f}{pytorch_s / ours_s:9.2f}x"
              f"{gflops(row_flops, ours_s):>14}{gflops(row_flops, pytorch_s):>17}")
    print("  (speed-up: PyTorch's time / ours; > 1 means torch-selfattn is faster)")


def main(argv=None):
    args = parse_args(argv)
    device = args.device
    info = torch_selfattn.build_info()
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(f"torch-selfattn demo: torch {torch.__version__}, device {device}{threads}, "
          f"backends {'/'.join(info['backends'])}, CPU tile products: {info['tile_gemm']}")
    print(f"block: batch {args.batch}, seq-len {args.seq_len}, dim {args.dim}, {args.heads} heads "
          f"(head dim {args.dim // args.heads}), causal, float32", flush=True)

    torch.manual_seed(0)
    block = Block(args.dim, args.heads).to(device)
    x = torch.randn(args.batch, args.seq_len, args.dim, device=device)
    grad_output = torch.randn_like(x)

    progress("forward + backward with torch-selfattn")
    ours = run_block(block, x, grad_output, ours=True)
    progress("forward + backward with PyTorch's SDPA")
    pytorch = run_block(block, x, grad_output, ours=False)
    progress("forward + backward of the PyTorch block in float64 (the reference)")
    reference = run_block(copy.deepcopy(block).double(), x.double(), grad_output.double(), ours=False)
    ok = compare(ours, pytorch, reference)

    print(flush=True)
    print_timings(timings(args, device, block, x, grad_output), args.repeats)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
