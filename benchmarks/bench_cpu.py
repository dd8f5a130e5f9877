"""torch-selfattn against PyTorch's CPU SDPA, on the same inputs, in one process.

For each configuration it times the forward and the forward+backward of both
(interleaved, median of repeats), and prints GFLOP/s (FlashAttention's count:
4·B·H·L·S·E forward, halved for causal, backward 2.5× that), our speed-up, and
the fraction of a peak measured in the same run: a large fp32 torch.mm (our
kernels compute in fp32 for every dtype but float64; the bf16 mm rate is
printed too, since on CPUs without AVX-512-BF16 it is no peak at all). PyTorch's backend is reported as "flash" or "math"
(its CPU flash kernel takes no dropout and no mask that requires grad).

    python benchmarks/bench_cpu.py                # the default table
    python benchmarks/bench_cpu.py --quick        # a smoke run
    python benchmarks/bench_cpu.py --markdown out.md
"""
import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import torch_selfattn
from torch_selfattn.info import cpu_model


@dataclass(frozen=True)
class Config:
    dtype: torch.dtype
    batch: int
    heads: int
    seq_len: int
    head_dim: int
    causal: bool = False
    kv_heads: int = 0  # 0: same as heads
    float_mask: bool = False
    dropout_p: float = 0.0

    @property
    def label(self):
        parts = [str(self.dtype).replace("torch.", ""), f"B{self.batch}", f"H{self.heads}"]
        if self.kv_heads:
            parts.append(f"KV{self.kv_heads}")
        parts += [f"L{self.seq_len}", f"E{self.head_dim}"]
        parts += [name for name, on in (("causal", self.causal), ("mask", self.float_mask)) if on]
        if self.dropout_p:
            parts.append(f"drop{self.dropout_p}")
        return " ".join(parts)

    def forward_flops(self):
        flops = 4 * self.batch * self.heads * self.seq_len * self.seq_len * self.head_dim
        return flops / 2 if self.causal else flops


def default_configs(quick):
    if quick:
        return [Config(torch.float32, 1, 8, 512, 64), Config(torch.bfloat16, 1, 8, 512, 64, causal=True)]
    configs = []
    for dtype in (torch.float32, torch.bfloat16):
        for seq_len in (512, 1024, 2048):
            for causal in (False, True):
                configs.append(Config(dtype, 1, 8, seq_len, 64, causal=causal))
        configs.append(Config(dtype, 1, 8, 1024, 128))
        configs.append(Config(dtype, 1, 16, 1024, 64, kv_heads=4, causal=True))
        configs.append(Config(dtype, 1, 8, 1024, 64, float_mask=True))
        configs.append(Config(dtype, 1, 8, 1024, 64, dropout_p=0.1))
    return configs


def make_inputs(cfg):
    g = torch.Generator().manual_seed(0)
    kv_heads = cfg.kv_heads or cfg.heads

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(cfg.dtype).requires_grad_()

    q = rand(cfg.batch, cfg.heads, cfg.seq_len, cfg.head_dim)
    k = rand(cfg.batch, kv_heads, cfg.seq_len, cfg.head_dim)
    v = rand(cfg.batch, kv_heads, cfg.seq_len, cfg.head_dim)
    mask = torch.randn(cfg.seq_len, cfg.seq_len, generator=g).to(cfg.dtype) if cfg.float_mask else None
    kwargs = dict(attn_mask=mask, dropout_p=cfg.dropout_p, is_causal=cfg.causal, enable_gqa=bool(cfg.kv_heads))
    return (q, k, v), kwargs


def pytorch_backend(inputs, kwargs):
    """Which CPU backend PyTorch picks: flash if its flash kernel accepts the call."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.no_grad():
            F.scaled_dot_product_attention(*inputs, **kwargs)
        return "flash"
    except RuntimeError:
        return "math"


def time_interleaved(fns, repeats):
    """Median seconds of each function, the runs interleaved so that drifts in
    clock speed hit all of them alike."""
    for fn in fns:
        fn()  # warm-up
    samples = [[] for _ in fns]
    for _ in range(repeats):
        for fn, s in zip(fns, samples):
            start = time.perf_counter()
            fn()
            s.append(time.perf_counter() - start)
    return [statistics.median(s) for s in samples]


def matmul_peak(dtype, size=2048, repeats=5):
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    (seconds,) = time_interleaved([lambda: torch.mm(a, b)], repeats)
    return 2 * size**3 / seconds / 1e9


def bench_config(cfg, repeats):
    inputs, kwargs = make_inputs(cfg)

    def forward(fn):
        with torch.no_grad():
            fn(*inputs, **kwargs)

    def forward_backward(fn):
        out = fn(*inputs, **kwargs)
        out.backward(torch.ones_like(out))

    ours, theirs = torch_selfattn.scaled_dot_product_attention, F.scaled_dot_product_attention
    fwd_ours, fwd_pt = time_interleaved([lambda: forward(ours), lambda: forward(theirs)], repeats)
    fb_ours, fb_pt = time_interleaved([lambda: forward_backward(ours), lambda: forward_backward(theirs)], repeats)
    flops = cfg.forward_flops()
    return {
        "backend": pytorch_backend(inputs, kwargs),
        "fwd": (flops / fwd_ours / 1e9, flops / fwd_pt / 1e9),
        "fwd_bwd": (3.5 * flops / fb_ours / 1e9, 3.5 * flops / fb_pt / 1e9),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two small configurations")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    # bf16 at a smaller size: without AVX-512-BF16 a 2048² bf16 mm takes minutes.
    peaks = {torch.float32: matmul_peak(torch.float32, 2048), torch.bfloat16: matmul_peak(torch.bfloat16, 512)}
    header = [
        "# torch-selfattn vs PyTorch SDPA on CPU",
        "",
        f"Machine: {cpu_model()}, {args.threads} threads; torch {torch.__version__}; "
        f"tile products: {torch_selfattn.build_info()['tile_gemm']}.",
        f"Peak (torch.mm, same run): fp32 2048² {peaks[torch.float32]:.1f} GFLOP/s, "
        f"bf16 512² {peaks[torch.bfloat16]:.1f} GFLOP/s.",
        "",
        "| config | PyTorch backend | fwd ours GFLOP/s | fwd PyTorch | fwd ratio | fwd % of fp32 mm "
        "| fwd+bwd ours | fwd+bwd PyTorch | fwd+bwd ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(header), flush=True)
    rows, fwd_ratios, fb_ratios = [], [], []
    for cfg in default_configs(args.quick):
        r = bench_config(cfg, args.repeats)
        fwd_ratio, fb_ratio = r["fwd"][0] / r["fwd"][1], r["fwd_bwd"][0] / r["fwd_bwd"][1]
        fwd_ratios.append(fwd_ratio)
        fb_ratios.append(fb_ratio)
        row = (
            f"| {cfg.label} | {r['backend']} | {r['fwd'][0]:.1f} | {r['fwd'][1]:.1f} | {fwd_ratio:.2f}× "
            f"| {100 * r['fwd'][0] / peaks[torch.float32]:.0f}% | {r['fwd_bwd'][0]:.1f} | {r['fwd_bwd'][1]:.1f} "
            f"| {fb_ratio:.2f}× |"
        )
        rows.append(row)
        print(row, flush=True)
    footer = (
        f"\nGeometric mean of our speed over PyTorch's: forward {statistics.geometric_mean(fwd_ratios):.2f}×, "
        f"forward+backward {statistics.geometric_mean(fb_ratios):.2f}×."
    )
    print(footer)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(header + rows) + "\n" + footer + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
