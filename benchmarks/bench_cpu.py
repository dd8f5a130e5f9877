"""torch-selfattn against PyTorch's CPU SDPA, on the same inputs, in one process.

For each configuration it times the forward and the forward+backward of both
(interleaved, median of repeats), and prints GFLOP/s (FlashAttention's count:
4·B·H·L·S·E forward, halved for causal, backward 2.5× that), our speed-up, and
the fraction of a peak measured in the same run: a large torch.mm in the
configuration's dtype, or in float32 where that is faster (a CPU without
bfloat16 arithmetic). PyTorch's backend is reported as "flash" or "math" (its
CPU flash kernel takes no dropout and no mask that requires grad).

Then it runs forward+backward at L = 4k, 16k and 32k, each in a process of its
own, and prints the peak resident memory each added: ours grows linearly in L,
like PyTorch's flash kernel, where the math path would hold L×L scores.

With --features it runs instead the features beyond PyTorch's SDPA, each
against the best PyTorch has for the same job (benchmarks/cpu_feature_cases.py):
sliding windows, packed variable-length batches and KV-cache decoding; then
attention sinks, paged KV caches and the logsumexp's gradient
(benchmarks/sinks_paged_lse_cases.py).

    python benchmarks/bench_cpu.py                # the table and the memory
    python benchmarks/bench_cpu.py --quick        # a smoke run
    python benchmarks/bench_cpu.py --markdown out.md
    python benchmarks/bench_cpu.py --features --markdown benchmarks/results/cpu_features.md
"""
import argparse
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import torch_selfattn
import sinks_paged_lse_cases
from cpu_feature_cases import feature_tables
from torch_selfattn._cli.info import cpu_model


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
        # Small shapes: the demo's (B16 H4 L128 E32 causal) and its neighbours.
        for seq_len in (128, 256):
            for head_dim in (32, 64):
                for causal in (False, True):
                    configs.append(Config(dtype, 16, 4, seq_len, head_dim, causal=causal))
        for seq_len in (512, 1024, 2048, 4096):
            for causal in (False, True):
                configs.append(Config(dtype, 1, 8, seq_len, 64, causal=causal))
        for seq_len in (1024, 4096):
            configs.append(Config(dtype, 1, 8, seq_len, 128))
        configs.append(Config(dtype, 2, 16, 2048, 128, causal=True))
        configs.append(Config(dtype, 4, 16, 1024, 64))
        configs.append(Config(dtype, 1, 16, 2048, 64, kv_heads=4, causal=True))
        configs.append(Config(dtype, 1, 8, 1024, 64, float_mask=True))
        configs.append(Config(dtype, 1, 8, 1024, 64, dropout_p=0.1))
    # float16: PyTorch's CPU kernel takes it too (its products on AVX-512 FP16).
    configs += [Config(torch.float16, 16, 4, 128, 32, causal=True), Config(torch.float16, 1, 8, 1024, 64),
                Config(torch.float16, 1, 8, 1024, 64, causal=True)]
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
    """GFLOP/s of a size² torch.mm in dtype."""
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


MEMORY_PROBE = """
import sys, torch, torch.nn.functional as F, torch_selfattn
which, seq_len = sys.argv[1], int(sys.argv[2])
q, k, v = (torch.randn(1, 1, seq_len, 64, requires_grad=True) for _ in range(3))
fn = torch_selfattn.scaled_dot_product_attention if which == "ours" else F.scaled_dot_product_attention
fn(q[:, :, :8], k[:, :, :8], v[:, :, :8]).sum().backward()  # load the kernels before the baseline
q.grad = k.grad = v.grad = None
def high_water_kib():  # this process's own peak; ru_maxrss would count the parent's, inherited over fork
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
before = high_water_kib()
out = fn(q, k, v, is_causal=True)
out.backward(torch.ones_like(out))
print(high_water_kib() - before)
"""


def peak_memory_mib(which, seq_len):
    """Peak resident memory that forward+backward added, in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, which, str(seq_len)], capture_output=True, text=True, check=True
    )
    return int(result.stdout.strip()) / 1024


def memory_table():
    lines = [
        "",
        "Peak memory added by forward+backward (fp32, B1 H1 E64, causal), each in a fresh process; "
        "one L×L fp32 score matrix shown for scale:",
        "",
        "| L | ours MiB | PyTorch MiB | one L×L matrix MiB |",
        "|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for seq_len in (4096, 16384, 32768):
        row = (
            f"| {seq_len} | {peak_memory_mib('ours', seq_len):.1f} | {peak_memory_mib('pytorch', seq_len):.1f} "
            f"| {seq_len * seq_len * 4 / 2**20:.0f} |"
        )
        lines.append(row)
        print(row, flush=True)
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two small configurations")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--features", action="store_true",
                        help="the tables of the features beyond SDPA (windows, varlen, KV decoding, sinks, paged "
                             "caches, the logsumexp's gradient) instead of the SDPA table")
    parser.add_argument("--note", default="", help="a line for the header: what else ran on the machine, say")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    mm = {dtype: matmul_peak(dtype) for dtype in (torch.float32, torch.bfloat16, torch.float16)}
    # A CPU without bfloat16 or half arithmetic runs those products through
    # float32, and its torch.mm in them can be far slower than that: the peak
    # is the faster of the dtype's own rate and float32's.
    peaks = {dtype: max(rate, mm[torch.float32]) for dtype, rate in mm.items()}
    machine = [
        f"Machine: {cpu_model()}, {args.threads} threads; torch {torch.__version__}; "
        f"tile products: {torch_selfattn.build_info()['tile_gemm']}.",
        f"2048² torch.mm, same run: fp32 {mm[torch.float32]:.1f} GFLOP/s, "
        f"bf16 {mm[torch.bfloat16]:.1f} GFLOP/s, fp16 {mm[torch.float16]:.1f} GFLOP/s. "
        "The % columns divide by the faster of the dtype's rate and fp32's. torch.mm runs PyTorch's BLAS; where "
        "our own tile products are faster (tile products: avx2), a % can pass 100.",
        *([args.note] if args.note else []),
        "",
    ]
    if args.features:
        header = ["# torch-selfattn's features beyond SDPA vs PyTorch on CPU", "", *machine]
        print("\n".join(header), flush=True)
        lines = header + feature_tables(args.repeats, peaks, args.quick) + sinks_paged_lse_cases.feature_tables(
            args.repeats, args.quick)
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write("\n".join(lines) + "\n")
        return 0
    header = [
        "# torch-selfattn vs PyTorch SDPA on CPU",
        "",
        *machine,
        "| config | PyTorch backend | fwd ours GFLOP/s | fwd PyTorch | fwd ratio | fwd % of mm peak "
        "| fwd+bwd ours | fwd+bwd PyTorch | fwd+bwd ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(header), flush=True)
    rows, fwd_ratios, fb_ratios, by_dtype = [], [], [], {}
    for cfg in default_configs(args.quick):
        r = bench_config(cfg, args.repeats)
        fwd_ratio, fb_ratio = r["fwd"][0] / r["fwd"][1], r["fwd_bwd"][0] / r["fwd_bwd"][1]
        fwd_ratios.append(fwd_ratio)
        fb_ratios.append(fb_ratio)
        by_dtype.setdefault(cfg.dtype, []).append((fwd_ratio, fb_ratio))
        row = (
            f"| {cfg.label} | {r['backend']} | {r['fwd'][0]:.1f} | {r['fwd'][1]:.1f} | {fwd_ratio:.2f}× "
            f"| {100 * r['fwd'][0] / peaks[cfg.dtype]:.0f}% | {r['fwd_bwd'][0]:.1f} | {r['fwd_bwd'][1]:.1f} "
            f"| {fb_ratio:.2f}× |"
        )
        rows.append(row)
        print(row, flush=True)
    footer = (
        f"\nGeometric mean of our speed over PyTorch's: forward {statistics.geometric_mean(fwd_ratios):.2f}×, "
        f"forward+backward {statistics.geometric_mean(fb_ratios):.2f}×."
    )
    for dtype, ratios in by_dtype.items():
        fwd, fb = zip(*ratios)
        footer += (
            f"\n{str(dtype).replace('torch.', '')}: forward {statistics.geometric_mean(fwd):.2f}×, "
            f"forward+backward {statistics.geometric_mean(fb):.2f}× ({len(ratios)} configurations; "
            f"{sum(r < 1.0 for r in fwd + fb)} of their {2 * len(ratios)} ratios below 1.0×)."
        )
    print(footer, flush=True)
    memory = [] if args.quick else memory_table()
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(header + rows) + "\n" + footer + "\n" + "".join(line + "\n" for line in memory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
