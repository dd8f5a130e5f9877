#!/usr/bin/env python3
"""Static gate on the sm_80 tensor-core kernels' fast paths, read from the
compiled SASS: no GPU needed.

For the fast instantiations (Rules::kPlain and kCausal, bf16; fp16 compiles
to the same instructions) at every head dim, forward and backward, it
compiles csrc/cuda/tensor_core/ for sm_80 with the build's nvcc flags and
prints per kernel: registers, stack and spills (ptxas -v), and the main
loop's mix: HMMA, LDSM and all instructions per pass, instructions per
HMMA, local-memory accesses and convergence barriers. The main loop is the
kernel's HMMA-richest loop (found by its backward branch); where two loops
tie, as the forward's edge-tile and interior-tile loops do, it is the leaner
one, which runs all the tiles but one or two per block.

It fails on spills or stack, on local memory in a main loop, and on more
instructions per HMMA than LIMITS allows at head dims 64 and 128.
Instructions per HMMA track speed: FlashAttention-2's sm_80 loops run 3.6
(forward) and 2.8 (backward). The targets are 4.0 and 3.5 (issue 17); where
a kernel has not reached its target yet, its limit holds what it reaches,
so that no change makes it worse.

Needs nvcc, cuobjdump and the nvdisasm it runs (pip install
nvidia-cuda-cuobjdump==13.2.86 nvidia-cuda-nvdisasm==13.2.86 where the
toolkit lacks them). CI runs it (.ci/run); its table, from one run and
naming the machine, is benchmarks/results/sass_sm80.md.
usage: benchmarks/sass_gate.py [--jobs N] [--out FILE]
"""
import argparse
import collections
import concurrent.futures
import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAD_DIMS = (32, 64, 96, 128, 256)
RULES = {"kPlain": 0, "kCausal": 1}
# The most instructions per HMMA that a fast path's main loop may run, at
# the head dims the targets name; the others are reported, and held to no
# spills alone.
LIMITS = {("forward", 64): 4.0, ("forward", 128): 4.0, ("backward", 64): 5.3, ("backward", 128): 4.0}
TARGETS = {"forward": 4.0, "backward": 3.5}
NVCC_FLAGS = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo", "-gencode", "arch=compute_80,code=sm_80",
              "-Xptxas", "-v,-warn-spills,-warn-lmem-usage"]
INSTANTIATIONS = """#include "cuda/tensor_core/launch.cuh"
namespace selfattn::cuda::tc {{
template void launch_forward_with<__nv_bfloat16, {d}, Rules::kPlain>(const AttentionParams&, const DropoutSeed&,
                                                                    cudaStream_t);
template void launch_forward_with<__nv_bfloat16, {d}, Rules::kCausal>(const AttentionParams&, const DropoutSeed&,
                                                                     cudaStream_t);
template void launch_backward_with<__nv_bfloat16, {d}, Rules::kPlain>(const AttentionBackwardParams&,
                                                                     const DropoutSeed&, const BackwardBuffers&,
                                                                     cudaStream_t);
template void launch_backward_with<__nv_bfloat16, {d}, Rules::kCausal>(const AttentionBackwardParams&,
                                                                      const DropoutSeed&, const BackwardBuffers&,
                                                                      cudaStream_t);
}}
"""


def find_tool(name):
    path = shutil.which(name)
    if path:
        return path
    try:  # the pip wheel's copy (nvidia-cuda-cuobjdump)
        import nvidia.cu13
        candidate = os.path.join(list(nvidia.cu13.__path__)[0], "bin", name)
        if os.path.exists(candidate):
            return candidate
    except ImportError:
        pass
    sys.exit(f"sass_gate: {name} not found: put the CUDA toolkit's bin on PATH"
             + (" or pip install nvidia-cuda-cuobjdump==13.2.86" if name == "cuobjdump" else ""))


def disassemble(cuobjdump, obj):
    """The object's SASS; cuobjdump runs nvdisasm, which a toolkit may lack."""
    done = subprocess.run([cuobjdump, "-sass", obj], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"sass_gate: cuobjdump -sass failed for {os.path.basename(obj)}:\n{done.stderr.strip()}\n"
                 "(where nvdisasm is missing: pip install nvidia-cuda-nvdisasm==13.2.86)")
    return done.stdout


def compile_head_dim(nvcc, cuobjdump, head_dim, workdir):
    source = os.path.join(workdir, f"fast_paths_{head_dim}.cu")
    with open(source, "w") as f:
        f.write(INSTANTIATIONS.format(d=head_dim))
    obj = source[:-3] + ".o"
    done = subprocess.run([nvcc, *NVCC_FLAGS, "-I", os.path.join(ROOT, "csrc"), "-c", source, "-o", obj],
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"sass_gate: nvcc failed for head dim {head_dim}:\n{done.stderr}")
    return done.stderr, disassemble(cuobjdump, obj)


def ptxas_usage(log):
    """{mangled kernel name: (registers, stack bytes, spill-store bytes, spill-load bytes)}."""
    usage, name, frame = {}, None, (0, 0, 0)
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            name = m.group(1)
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            frame = tuple(int(x) for x in m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m and name:
            usage[name] = (int(m.group(1)), *frame)
    return usage


def sass_functions(sass, with_predicate=False):
    """{mangled name: [(address, opcode, text)]}, the predicate stripped from
    the text; with_predicate: a fourth field says whether there was one."""
    functions, current = {}, None
    for line in sass.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            current = functions.setdefault(m.group(1), [])
            continue
        m = re.search(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m and current is not None:
            text = re.sub(r"^@!?U?P\w+\s+", "", m.group(2))
            entry = (int(m.group(1), 16), text.split()[0] if text else "", text)
            current.append(entry + (text != m.group(2),) if with_predicate else entry)
    return functions


def main_loop(instructions):
    """The mix of the HMMA-richest loop, the leaner of any that tie."""
    best = None
    for address, opcode, text in instructions:
        m = re.search(r"BRA\s+(?:\S+\s+)?(0x[0-9a-f]+)", text) if opcode.startswith("BRA") else None
        if not m or int(m.group(1), 16) > address:
            continue
        start = int(m.group(1), 16)
        body = [op for a, op, _ in instructions if start <= a <= address]
        hmma = sum(op.startswith("HMMA") for op in body)
        key = (hmma, -len(body))
        if hmma and (best is None or key > best[0]):
            best = (key, body)
    if best is None:
        return None
    body = best[1]
    return {
        "hmma": sum(op.startswith("HMMA") for op in body),
        "ldsm": sum(op.startswith("LDSM") for op in body),
        "total": len(body),
        "local": sum(op.startswith(("LDL", "STL")) for op in body),
        "convergence": sum(op.split(".")[0] in ("BSSY", "BSYNC", "WARPSYNC") for op in body),
    }


def machine_line(nvcc, target="sm_80 (bf16)"):
    """What compiled the table: the host, nvcc's release, the date."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.splitlines()
    release = next((line.split(",", 1)[1].strip() for line in version if "release" in line), "unknown release")
    return (f"Compiled for {target} on {cpu} ({os.cpu_count()} vCPUs, no GPU) by nvcc ({release}); "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. Static counts: no GPU ran them.")


def gate_arguments(description):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", help="also write the table, with the machine, to this markdown file")
    return parser.parse_args()


def compile_head_dims(compile_one, head_dims, jobs):
    """(nvcc, {head dim: (ptxas log, SASS)}), compile_one(nvcc, cuobjdump,
    head_dim, workdir) run for the head dims, jobs at a time."""
    nvcc, cuobjdump = find_tool("nvcc"), find_tool("cuobjdump")
    with tempfile.TemporaryDirectory() as workdir:
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            results = pool.map(lambda d: compile_one(nvcc, cuobjdump, d, workdir), head_dims)
            return nvcc, dict(zip(head_dims, results))


def report(table, failures, out, heading, name):
    """Prints the table and the failures; writes heading, then the table, to
    out if given. The exit status: 1 on any failure."""
    print(table)
    if out:
        with open(out, "w") as f:
            f.write(f"{heading}\n\n{table}\n")
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    print(f"{name}: " + ("failed" if failures else "passed"))
    return 1 if failures else 0


HEADER = ("| kernel | regs | stack | spill | HMMA | LDSM | instr | instr/HMMA | limit | target | LDL/STL "
          "| BSSY/BSYNC/WARPSYNC |")


def main():
    args = gate_arguments(__doc__.splitlines()[0])
    nvcc, compiled = compile_head_dims(compile_head_dim, HEAD_DIMS, args.jobs)
    rows = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    failures = []
    for head_dim, (log, sass) in compiled.items():
        usage, functions = ptxas_usage(log), sass_functions(sass)
        for direction in ("forward", "backward"):
            for rules, code in RULES.items():
                pattern = f"{direction}_kernelI13__nv_bfloat16Li{head_dim}E"
                names = [n for n in functions if pattern in n and f"RulesE{code}E" in n]
                label = f"{direction} {rules[1:].lower()} d={head_dim}"
                if len(names) != 1:
                    failures.append(f"{label}: kernel not found in the SASS")
                    continue
                regs, stack, spill_st, spill_ld = usage.get(names[0], (0, 0, 0, 0))
                loop = main_loop(functions[names[0]])
                if loop is None:
                    failures.append(f"{label}: no HMMA loop")
                    continue
                per_hmma = loop["total"] / loop["hmma"]
                limit = LIMITS.get((direction, head_dim))
                rows.append(f"| {label} | {regs} | {stack} | {spill_st + spill_ld} | {loop['hmma']} | {loop['ldsm']} "
                            f"| {loop['total']} | {per_hmma:.2f} | {limit or '-'} | {TARGETS[direction]} "
                            f"| {loop['local']} | {loop['convergence']} |")
                if stack or spill_st or spill_ld:
                    failures.append(f"{label}: {stack} bytes of stack, {spill_st + spill_ld} of spills")
                if loop["local"]:
                    failures.append(f"{label}: {loop['local']} local-memory accesses in the main loop")
                if limit is not None and per_hmma > limit:
                    failures.append(f"{label}: {per_hmma:.2f} instructions per HMMA, above the limit {limit}")
    heading = (f"# Static gate: the sm_80 tensor-core fast paths\n\n{machine_line(nvcc)}\n\n"
               f"Main loop per warp per pass; `{os.path.relpath(__file__, ROOT)}`, limits and targets in its "
               "docstring.")
    return report("\n".join(rows), failures, args.out, heading, "sass gate")


if __name__ == "__main__":
    sys.exit(main())
