"""torch-selfattn against PyTorch's CUDA SDPA backends, on the same inputs, in one run.

The grid is FlashAttention's: hidden size 2048 (heads = 2048 / head dim),
head dims 64 and 128, (batch, sequence length) from (32, 512) to (1, 16k) so
that every row holds 16k tokens, causal and not, forward and forward+backward.
PyTorch runs each of its backends alone (torch.nn.attention.sdpa_kernel):
FLASH_ATTENTION, EFFICIENT_ATTENTION, CUDNN_ATTENTION, and MATH where its
B·H·L·S float32 scores stay below 8 GiB. A backend that refuses a
configuration shows "n/a"; "-" marks MATH not run.

TFLOP/s count FlashAttention's way: 4·B·H·L·S·E for the forward, halved when
causal; forward+backward 3.5 times that. Times are medians over repetitions
timed with CUDA events, after a warm-up, the repetitions filling about
--rep-ms milliseconds. A bf16 (and, with fp16 in --dtypes, fp16) 8192³
torch.mm measured in the same run gives the peak that "% of mm peak" is of.

A second table gives the peak of torch.cuda.max_memory_allocated over a
forward+backward, ours and FLASH's, against the least any implementation
needs: q, k, v, the output gradient, the output and the three gradients.

    python benchmarks/bench_gpu.py                      # full grid, bf16 and fp16
    python benchmarks/bench_gpu.py --quick              # 4 configurations, bf16
    python benchmarks/bench_gpu.py --out benchmarks/results/gpu.md
    TORCH_SELFATTN_HOPPER=1 python benchmarks/bench_gpu.py --label "Hopper forward"
"""
import argparse
import contextlib
import datetime
import statistics
import sys
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import torch_selfattn

HIDDEN = 2048
BATCH_AND_LENGTH = [(32, 512), (16, 1024), (8, 2048), (4, 4096), (2, 8192), (1, 16384)]
HEAD_DIMS = [64, 128]
PYTORCH_BACKENDS = {
    "FLASH": SDPBackend.FLASH_ATTENTION,
    "EFFICIENT": SDPBackend.EFFICIENT_ATTENTION,
    "CUDNN": SDPBackend.CUDNN_ATTENTION,
    "MATH": SDPBackend.MATH,
}
MATH_SCORE_LIMIT = 8 * 2**30  # bytes of float32 scores
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PASSES = ["fwd", "fwd+bwd"]
# Forward+backward in units of the forward's flops: the backward does 2.5 times the forward's work.
PASS_FLOP_FACTOR = {"fwd": 1.0, "fwd+bwd": 3.5}


@dataclass(frozen=True)
class Config:
    dtype_name: str
    batch: int
    seq_len: int
    head_dim: int
    causal: bool

    @property
    def heads(self):
        return HIDDEN // self.head_dim

    @property
    def label(self):
        causal = " causal" if self.causal else ""
        return f"{self.dtype_name} B{self.batch} H{self.heads} L{self.seq_len} E{self.head_dim}{causal}"

    def flops(self, pass_name):
        forward = 4 * self.batch * self.heads * self.seq_len * self.seq_len * self.head_dim
        return forward / (2 if self.causal else 1) * PASS_FLOP_FACTOR[pass_name]

    def math_fits(self):
        return self.batch * self.heads * self.seq_len * self.seq_len * 4 < MATH_SCORE_LIMIT

    def least_fwd_bwd_bytes(self):
        """q, k, v, grad_output, output, grad_q, grad_k, grad_v."""
        element = torch.finfo(DTYPES[self.dtype_name]).bits // 8
        return 8 * self.batch * self.heads * self.seq_len * self.head_dim * element


def configs(dtype_names, quick):
    if quick:
        return [
            Config("bf16", 8, 2048, 64, False),
            Config("bf16", 2, 8192, 64, True),
            Config("bf16", 8, 2048, 128, True),
            Config("bf16", 2, 8192, 128, False),
        ]
    return [
        Config(name, batch, seq_len, head_dim, causal)
        for name in dtype_names
        for head_dim in HEAD_DIMS
        for batch, seq_len in BATCH_AND_LENGTH
        for causal in (False, True)
    ]


def median_ms(fn, rep_ms, max_reps=200):
    """Median milliseconds of fn on the GPU: one warm-up call, three calls to
    estimate its time, then as many timed calls as fill about rep_ms (at
    least 3), each between two CUDA events."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate = start.elapsed_time(end) / 3
    reps = max(3, min(max_reps, int(rep_ms / max(estimate, 1e-3))))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for before, after in events:
        before.record()
        fn()
        after.record()
    torch.cuda.synchronize()
    return statistics.median(before.elapsed_time(after) for before, after in events)


def make_inputs(cfg):
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (cfg.batch, cfg.heads, cfg.seq_len, cfg.head_dim)
    dtype = DTYPES[cfg.dtype_name]
    q, k, v = (torch.randn(shape, generator=g, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    grad_out = torch.randn(shape, generator=g, device="cuda", dtype=dtype)
    return q, k, v, grad_out


def pass_functions(attention, cfg, q, k, v, grad_out):
    def forward():
        with torch.no_grad():
            attention(q, k, v, is_causal=cfg.causal)

    def forward_backward():
        out = attention(q, k, v, is_causal=cfg.causal)
        torch.autograd.grad(out, (q, k, v), grad_out)

    return {"fwd": forward, "fwd+bwd": forward_backward}


@contextlib.contextmanager
def running(name):
    """PyTorch restricted to the named backend, its warnings about why the
    others are skipped silenced (the table's "n/a" says it); nothing for ours."""
    if name == "ours":
        yield
        return
    with sdpa_kernel(PYTORCH_BACKENDS[name]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def attention_of(name):
    return torch_selfattn.scaled_dot_product_attention if name == "ours" else F.scaled_dot_product_attention


def measured(name, measure):
    """measure(), or None where a PyTorch backend raises RuntimeError (it
    refuses the call, or runs out of memory). Ours must take every
    configuration of the grid: its errors propagate."""
    if name == "ours":
        return measure()
    try:
        return measure()
    except RuntimeError:
        torch.cuda.empty_cache()
        return None


def time_backend(name, cfg, inputs, rep_ms):
    """{pass: median milliseconds, or None where a PyTorch backend refused}."""
    functions = pass_functions(attention_of(name), cfg, *inputs)
    with running(name):
        return {p: measured(name, lambda fn=fn: median_ms(fn, rep_ms)) for p, fn in functions.items()}


def peak_fwd_bwd_bytes(name, cfg, inputs):
    """torch.cuda.max_memory_allocated over one forward+backward, which
    counts the inputs already allocated; None where a PyTorch backend refuses."""
    fn = pass_functions(attention_of(name), cfg, *inputs)["fwd+bwd"]

    def measure():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()

    with running(name):
        return measured(name, measure)


def deterministic_fwd_bwd_ms(cfg, inputs, rep_ms):
    """Ours' forward+backward under torch.use_deterministic_algorithms(True)."""
    fn = pass_functions(torch_selfattn.scaled_dot_product_attention, cfg, *inputs)["fwd+bwd"]
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return median_ms(fn, rep_ms)
    finally:
        torch.use_deterministic_algorithms(before)


def bench_config(cfg, rep_ms):
    inputs = make_inputs(cfg)
    backends = ["ours", "FLASH", "EFFICIENT", "CUDNN"] + (["MATH"] if cfg.math_fits() else [])
    ms = {name: time_backend(name, cfg, inputs, rep_ms) for name in backends}
    tflops = {
        name: {p: None if t is None else cfg.flops(p) / (t * 1e-3) / 1e12 for p, t in times.items()}
        for name, times in ms.items()
    }
    memory = {name: peak_fwd_bwd_bytes(name, cfg, inputs) for name in ("ours", "FLASH")}
    deterministic = {"usual": ms["ours"]["fwd+bwd"], "deterministic": deterministic_fwd_bwd_ms(cfg, inputs, rep_ms)}
    return {"tflops": tflops, "memory": memory, "deterministic_ms": deterministic}


def matmul_peak_tflops(dtype, size=8192, rep_ms=300):
    a = torch.randn(size, size, device="cuda", dtype=dtype)
    b = torch.randn(size, size, device="cuda", dtype=dtype)
    ms = median_ms(lambda: torch.mm(a, b), rep_ms)
    return 2 * size**3 / (ms * 1e-3) / 1e12


def cell(value, digits=1, suffix=""):
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def ratio(a, b):
    return None if a is None or b is None else a / b


def speed_rows(cfg, result, peak):
    rows = []
    for pass_name in PASSES:
        speeds = {name: t[pass_name] for name, t in result["tflops"].items()}
        ours = speeds.pop("ours")
        available = [s for s in speeds.values() if s is not None]
        best = max(available) if available else None
        columns = [cfg.label, pass_name, cell(ours)]
        columns += [cell(speeds[name]) if name in speeds else "-" for name in PYTORCH_BACKENDS]
        columns += [cell(ratio(ours, speeds["FLASH"]), 2, "×"), cell(ratio(ours, best), 2, "×"),
                    cell(None if ours is None else 100 * ours / peak, 0, "%")]
        rows.append("| " + " | ".join(columns) + " |")
    return rows


def memory_row(cfg, result):
    least = cfg.least_fwd_bwd_bytes()
    ours, flash = result["memory"]["ours"], result["memory"]["FLASH"]
    mib = 2**20
    return (f"| {cfg.label} | {cell(None if ours is None else ours / mib, 0)} "
            f"| {cell(None if flash is None else flash / mib, 0)} | {least / mib:.0f} "
            f"| {cell(ratio(ours, least), 2, '×')} |")


SPEED_HEADER = [
    "| config | pass | ours TFLOP/s | FLASH | EFFICIENT | CUDNN | MATH | ours/FLASH | ours/best | ours % of mm peak |",
    "|---|---|---|---|---|---|---|---|---|---|",
]
MEMORY_HEADER = [
    "Peak torch.cuda.max_memory_allocated over forward+backward (MiB, inputs included), against the least "
    "possible: q, k, v, grad_output, output and the three gradients.",
    "",
    "| config | ours MiB | FLASH MiB | least MiB | ours/least |",
    "|---|---|---|---|---|",
]


DETERMINISTIC_HEADER = [
    "Ours' forward+backward under torch.use_deterministic_algorithms(True) (dQ added one key block after the "
    "other), against the usual run, same inputs.",
    "",
    "| config | usual ms | deterministic ms | cost |",
    "|---|---|---|---|",
]


def deterministic_row(cfg, result):
    times = result["deterministic_ms"]
    cost = ratio(times["deterministic"], times["usual"])
    return (f"| {cfg.label} | {cell(times['usual'], 3)} | {cell(times['deterministic'], 3)} "
            f"| {cell(None if cost is None else 100 * (cost - 1), 0, '%')} |")


def geometric_mean_line(results):
    parts = []
    for pass_name in PASSES:
        ratios = [ratio(r["tflops"]["ours"][pass_name], r["tflops"]["FLASH"][pass_name]) for r in results.values()]
        ratios = [x for x in ratios if x is not None]
        if ratios:
            parts.append(f"{pass_name} {statistics.geometric_mean(ratios):.2f}× over {len(ratios)} configurations")
    return "Geometric mean of ours/FLASH: " + ("; ".join(parts) if parts else "n/a") + "."


def report(results, peaks, rep_ms, label=None):
    """The markdown: header naming the machine (and what "ours" ran, when
    labelled), the speed table, the memory table."""
    peak_text = ", ".join(f"{name} {tflops:.0f} TFLOP/s" for name, tflops in peaks.items())
    lines = [
        "# torch-selfattn vs PyTorch SDPA on CUDA",
        "",
        *([f"Ours: {label}.", ""] if label else []),
        f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"Peak (8192³ torch.mm, same run): {peak_text}.",
        f"TFLOP/s: 4·B·H·L·S·E per forward (halved when causal), ×3.5 for forward+backward; median of "
        f"CUDA-event timings over about {rep_ms:.0f} ms per measurement. n/a: the backend refused the "
        f"configuration; -: MATH not run (its scores would pass 8 GiB).",
        "",
        *SPEED_HEADER,
    ]
    for cfg, result in results.items():
        lines += speed_rows(cfg, result, peaks[cfg.dtype_name])
    lines += ["", geometric_mean_line(results), "", *MEMORY_HEADER]
    lines += [memory_row(cfg, result) for cfg, result in results.items()]
    lines += ["", *DETERMINISTIC_HEADER]
    lines += [deterministic_row(cfg, result) for cfg, result in results.items()]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 bf16 configurations (E 64/128, L 2k/8k, causal or not)")
    parser.add_argument("--dtypes", default="bf16,fp16", help="comma-separated, of bf16 and fp16 (default: both)")
    parser.add_argument("--rep-ms", type=float, default=100.0, help="timed milliseconds per measurement")
    parser.add_argument("--out", help="also write the markdown report to this file")
    parser.add_argument("--label", help='what "ours" ran, for the header (e.g. which kernels a switch picked)')
    args = parser.parse_args()
    dtype_names = [name.strip() for name in args.dtypes.split(",") if name.strip()]
    unknown = [name for name in dtype_names if name not in DTYPES]
    if unknown or not dtype_names:
        parser.error(f"--dtypes takes bf16 and fp16, got {args.dtypes!r}")
    if not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA device (torch.cuda.is_available() is False)")
    if "CUDA" not in torch_selfattn.build_info()["backends"]:
        sys.exit("bench_gpu: torch_selfattn was built without its CUDA kernels; rebuild on a machine with nvcc")

    grid = configs(dtype_names, args.quick)
    peak_dtypes = sorted({"bf16"} | {cfg.dtype_name for cfg in grid})
    peaks = {name: matmul_peak_tflops(DTYPES[name]) for name in peak_dtypes}
    print("peak " + ", ".join(f"{n} {t:.0f} TFLOP/s" for n, t in peaks.items()), file=sys.stderr, flush=True)
    results = {}
    for i, cfg in enumerate(grid, 1):
        results[cfg] = bench_config(cfg, args.rep_ms)
        speeds = "; ".join(
            f"{p} " + " ".join(f"{name} {cell(t[p])}" for name, t in results[cfg]["tflops"].items()) for p in PASSES
        )
        print(f"[{i}/{len(grid)}] {cfg.label}: {speeds}", file=sys.stderr, flush=True)
    text = report(results, peaks, args.rep_ms, args.label)
    print(text, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
