"""Ring attention (torch_selfattn.distributed) on 1, 2 and 4 CPU processes
over gloo: how the time of one attention on a fixed sequence scales with the
number of ranks, and what share of it is communication.

For every world size W, W processes (one thread each) hold 1/W of the
sequence. Each configuration is timed these ways, the best of --repeats (the
run least disturbed by other work on a shared machine):
  - ring: ring_attention, forward and forward+backward;
  - compute only: the same ring steps on the same shapes with the
    communication left out (every rank computes on its own shard);
  - one pass: sending a K/V shard to the next rank while receiving one;
  - the machine's ceiling: the same matmuls on every rank at once. W times
    their time alone over their time together is the most that W ranks can
    gain on this machine, whatever the ring does (cores shared with other
    work, or virtual CPUs that share a physical core, give less than W);
  - rank 0's CPU time of the ring's forward+backward, which shows the work
    split over the ranks even when other work on the machine holds back
    the wall time.
The communication share is 1 - compute only / ring: the part of the ring's
time that overlapping did not hide (waiting for a shard, or for a slower
rank). Speed-up is against W = 1. With W = 1 the table also gives PyTorch's
SDPA and torch-selfattn's plain SDPA on the whole sequence, in the same
process and thread count; the ring at W = 1 has no communication, so the
difference to the plain SDPA is the ring's own overhead.

    python benchmarks/bench_ring.py                       # the default table
    python benchmarks/bench_ring.py --quick               # a smoke run
    python benchmarks/bench_ring.py --markdown benchmarks/results/ring_cpu.md
    python benchmarks/bench_ring.py --device cuda         # one GPU: correctness only

On a GPU machine there is one rank per GPU (NCCL); a single GPU can only
check correctness, so --device cuda runs W = 1 against PyTorch's SDPA and
a float64 reference, and says that scaling needs a machine with several GPUs.
"""
import argparse
import os
import platform
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import torch_selfattn
from torch_selfattn.distributed import ring_attention, zigzag_shard
from torch_selfattn.distributed.ring import ring_backward, ring_forward
from torch_selfattn.distributed.ring_comm import PendingPass, Ring


class ComputeOnlyRing(Ring):
    """A ring's steps without its communication: every step computes on the
    rank's own shard, which has the shape of every other."""

    def __init__(self, ring):
        vars(self).update(vars(ring))

    def pass_along(self, tensors, tag):
        return PendingPass([], tensors)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", default="1,2,4", help="world sizes, comma-separated")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=2048, help="the whole sequence, split over the ranks")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a smoke run: L=512, worlds 1,2, one repeat")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.seq_len, args.worlds, args.repeats = 512, "1,2", 1
    args.worlds = [int(w) for w in args.worlds.split(",")]
    if any(args.seq_len % (2 * w) for w in args.worlds):
        parser.error(f"--seq-len ({args.seq_len}) must be a multiple of 2 x every world size (the zig-zag chunks)")
    return args


def progress(message):
    print(f"-- {message}", file=sys.stderr, flush=True)


def full_inputs(args, dtype, device):
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.heads, args.seq_len, args.head_dim)
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device) for _ in range(4)]


def best_ms(fn, repeats, group_sync, clock=time.perf_counter):
    """Shortest time of fn over repeats, after a warm-up, each run between two
    barriers so that wall time counts the slowest rank. ``clock``
    time.process_time gives this rank's CPU time instead."""
    fn()
    times = []
    for _ in range(repeats):
        group_sync()
        start = clock()
        fn()
        group_sync()
        times.append(clock() - start)
    return 1e3 * min(times)


def time_rank(rank, world_size, args, is_causal):
    """This rank's timings (ms) of one configuration."""
    q, k, v, grad = (zigzag_shard(t, rank, world_size) for t in full_inputs(args, torch.float32, "cpu"))
    ring = Ring()
    compute_only = ComputeOnlyRing(ring)
    scale = args.head_dim ** -0.5
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]

    def ring_fwd():
        with torch.no_grad():
            ring_attention(q, k, v, is_causal=is_causal)

    def ring_fwd_bwd():
        ring_attention(*leaves, is_causal=is_causal).backward(grad)

    def compute_fwd():
        ring_forward(compute_only, q, k, v, is_causal, scale)

    def compute_fwd_bwd():
        out, lse = ring_forward(compute_only, q, k, v, is_causal, scale)
        ring_backward(compute_only, grad, q, k, v, out, lse, is_causal, scale)

    def one_pass():
        ring.pass_along([k, v], tag=0).wait()

    square = torch.randn(512, 512)

    def matmuls():
        for _ in range(20):
            square @ square

    timings = {name: best_ms(fn, args.repeats, dist.barrier) for name, fn in [
        ("fwd", ring_fwd), ("fwd_bwd", ring_fwd_bwd), ("compute_fwd", compute_fwd),
        ("compute_fwd_bwd", compute_fwd_bwd), ("pass", one_pass), ("matmuls", matmuls)]}
    # CPU time is what the rank itself spent: it falls as 1/W even where
    # other work on the machine keeps the wall time from doing so.
    timings["cpu_fwd_bwd"] = best_ms(ring_fwd_bwd, args.repeats, dist.barrier, clock=time.process_time)
    if world_size == 1:
        timings.update(single_process_timings(args, is_causal))
    return timings


def single_process_timings(args, is_causal):
    """PyTorch's SDPA and torch-selfattn's on the whole sequence."""
    q, k, v, grad = full_inputs(args, torch.float32, "cpu")
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    timings = {}
    for name, sdpa in (("pytorch", F.scaled_dot_product_attention),
                       ("selfattn", torch_selfattn.scaled_dot_product_attention)):
        def fwd():
            with torch.no_grad():
                sdpa(q, k, v, is_causal=is_causal)

        def fwd_bwd():
            sdpa(*leaves, is_causal=is_causal).backward(grad)

        timings[f"{name}_fwd"] = best_ms(fwd, args.repeats, lambda: None)
        timings[f"{name}_fwd_bwd"] = best_ms(fwd_bwd, args.repeats, lambda: None)
    return timings


def rank_main(rank, world_size, args, init_file, result_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    results = {causal: time_rank(rank, world_size, args, causal) for causal in (False, True)}
    if rank == 0:
        torch.save(results, result_file)
    dist.destroy_process_group()


def run_world(world_size, args):
    with tempfile.TemporaryDirectory() as workdir:
        init_file, result_file = os.path.join(workdir, "init"), os.path.join(workdir, "results.pt")
        mp.spawn(rank_main, args=(world_size, args, init_file, result_file), nprocs=world_size)
        return torch.load(result_file)


def share(total, compute):
    return f"{max(0.0, 1 - compute / total):.0%}"


def table(args, results):
    base = results[args.worlds[0]]
    shard_mb = 2 * args.batch * args.heads * args.seq_len * args.head_dim * 4 / 1e6
    lines = [
        "| mask | ranks | fwd ms | fwd speed-up | fwd comm share | fwd+bwd ms | fwd+bwd speed-up "
        "| fwd+bwd comm share | fwd+bwd CPU ms of rank 0 | one K/V pass ms (MB) | machine ceiling |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for causal in (False, True):
        for world_size in args.worlds:
            t = results[world_size][causal]
            lines.append(
                f"| {'causal' if causal else 'none'} | {world_size} | {t['fwd']:.1f} "
                f"| {base[causal]['fwd'] / t['fwd']:.2f}× | {share(t['fwd'], t['compute_fwd'])} "
                f"| {t['fwd_bwd']:.1f} | {base[causal]['fwd_bwd'] / t['fwd_bwd']:.2f}× "
                f"| {share(t['fwd_bwd'], t['compute_fwd_bwd'])} | {t['cpu_fwd_bwd']:.1f} "
                f"| {t['pass']:.2f} ({shard_mb / world_size:.2f}) "
                f"| {world_size * base[causal]['matmuls'] / t['matmuls']:.2f}× |")
    if 1 in results:
        lines += ["", "Whole sequence in one process (1 thread), same inputs:", "",
                  "| mask | PyTorch SDPA fwd ms | torch-selfattn fwd ms | ring W=1 fwd ms "
                  "| PyTorch fwd+bwd ms | torch-selfattn fwd+bwd ms | ring W=1 fwd+bwd ms |",
                  "|---|---|---|---|---|---|---|"]
        for causal in (False, True):
            t = results[1][causal]
            lines.append(f"| {'causal' if causal else 'none'} | {t['pytorch_fwd']:.1f} | {t['selfattn_fwd']:.1f} "
                         f"| {t['fwd']:.1f} | {t['pytorch_fwd_bwd']:.1f} | {t['selfattn_fwd_bwd']:.1f} "
                         f"| {t['fwd_bwd']:.1f} |")
    return lines


def machine():
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    return f"{model}, {os.cpu_count()} cores; torch {torch.__version__}"


def run_cpu(args):
    load_before = os.getloadavg()[0]
    results = {}
    for world_size in args.worlds:
        progress(f"{world_size} rank(s)")
        results[world_size] = run_world(world_size, args)
    header = [
        "# Ring attention on CPU processes (gloo)",
        "",
        f"Machine: {machine()}. One thread per rank. Load average (1 min) before the run: "
        f"{load_before:.2f}; other work on the machine slows ranks unevenly.",
        f"Sequence: float32, B={args.batch}, H={args.heads}, L={args.seq_len} (whole sequence, split over the "
        f"ranks; zig-zag), E={args.head_dim}; best of {args.repeats}.",
        "Comm share: 1 - (the same steps without communication) / ring time. Speed-up: against 1 rank.",
        "Machine ceiling: the speed-up of independent matmuls on every rank at once, the most W ranks can "
        "gain here.",
        "",
    ]
    cores = os.cpu_count()
    if max(args.worlds) > cores:
        header += [f"More ranks than the {cores} cores: beyond {cores} ranks they share cores, "
                   "so the time cannot fall further.", ""]
    text = "\n".join(header + table(args, results)) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    return 0


def run_cuda(args):
    """One rank on one GPU (NCCL): correctness against PyTorch and float64."""
    if not torch.cuda.is_available() or "CUDA" not in torch_selfattn.build_info()["backends"]:
        print("--device cuda needs a GPU and torch-selfattn built with CUDA kernels; this machine/build has "
              f"cuda available: {torch.cuda.is_available()}, kernels for: "
              f"{', '.join(torch_selfattn.build_info()['backends'])}")
        return 2
    with tempfile.TemporaryDirectory() as workdir:
        dist.init_process_group("nccl", init_method=f"file://{workdir}/init", rank=0, world_size=1)
        ok = True
        for dtype in (torch.float16, torch.bfloat16):
            for causal in (False, True):
                q, k, v, _ = full_inputs(args, dtype, "cuda")
                ours = ring_attention(q, k, v, is_causal=causal)
                pytorch = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal)
                ours_err, pytorch_err = ((t.double() - exact).abs().max().item() for t in (ours, pytorch))
                passed = ours_err <= 2 * pytorch_err + torch.finfo(dtype).eps
                ok &= passed
                print(f"{dtype} causal={causal}: error vs float64 {ours_err:.2e}, PyTorch's {pytorch_err:.2e} "
                      f"{'OK' if passed else 'TOO FAR'}")
        dist.destroy_process_group()
    print("One GPU checks correctness only; scaling needs a machine with several GPUs (see "
          "docs/ring_attention.md for the expected scaling to 8 GPUs).")
    return 0 if ok else 1


def main(argv=None):
    args = parse_args(argv)
    return run_cuda(args) if args.device == "cuda" else run_cpu(args)


if __name__ == "__main__":
    sys.exit(main())
