#!/usr/bin/env python3
"""Static gate on the Hopper forward (csrc/cuda/hopper/, sm_90a), read from the
compiled SASS: no GPU needed.

It compiles csrc/cuda/hopper/forward_hdim{64,128,256}.cu for sm_90a with the
build's nvcc flags and checks, per kernel (fp16 and bf16 at each head dim):

- registers, stack and spills (ptxas -v): no stack, no spills;
- no "wgmma serialized" warning from ptxas (a wgmma that waits for the one
  before it, because registers it uses are touched in between);
- setmaxnreg: the producer branch (after USETMAXREG.DEALLOC) uses fewer
  registers than it gives itself, and the consumers claim theirs
  (USETMAXREG.TRY_ALLOC);
- named barriers (BAR.SYNC / BAR.ARV with an id: the consumers' ping-pong);
- the consumer's interior loop (the tile loop without masking: the leanest
  loop with one tile's HGMMAs): WARPGROUP.DEPBAR.LE gsb0, 0x1 in it (Q·K[n]ᵀ
  waited for while P·V[n+1] still runs), and every exponential of the
  softmax between that wait and the next wait for P·V, so that the softmax
  really runs under P·V; its instructions per 128 keys against LIMITS
  (what it reaches now, so that no change makes it worse) and the target
  (FlashAttention-3's consumer runs about 470 per 128-key tile at head dim
  128; the issue asks for about 480 or fewer);
- occupancy by arithmetic: registers × threads and shared memory per block
  against the SM's 64K registers and 228 KiB;
- the register layouts the kernel assumes (the accumulator's rows and
  columns per register, and S's registers being P·V's register-A operand
  as they are): benchmarks/hopper_fragment_layouts.cu, compiled for the host
  and run.

Needs nvcc, cuobjdump and nvdisasm (pip install
nvidia-cuda-cuobjdump==13.2.86 nvidia-cuda-nvdisasm==13.2.86 where the
toolkit lacks them) and the CUTLASS headers setup.py finds (pip install
nvidia-cutlass==4.2.0.0). CI runs it (.ci/run); its table, from one run and
naming the machine, is benchmarks/results/sass_sm90a.md.
usage: benchmarks/sass_gate_hopper.py [--jobs N] [--out FILE]
"""
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sass_gate import (ROOT, compile_head_dims, disassemble, gate_arguments, machine_line,  # noqa: E402
                       ptxas_usage, report, sass_functions)

sys.path.insert(0, ROOT)
import setup  # noqa: E402  (setup.py: only its helpers; setup() runs as __main__ alone)

# The plan of csrc/cuda/hopper/forward_traits.cuh, for the arithmetic.
HEAD_DIMS = (64, 128, 256)
BLOCK_N = {64: 128, 128: 128, 256: 64}
BLOCK_M, STAGES, THREADS, ELEMENT_BYTES = 128, 2, 384, 2
# Instructions per 128 keys in the interior loop, per consumer warp: the most
# allowed (what each head dim reaches with nvcc 13.0, 416, 468 and 846, with
# a little room; at head dim 128 the target) and the target.
LIMITS = {64: 420, 128: 480, 256: 850}
TARGET_128 = 480
REGISTER_FILE, SHARED_PER_SM, SHARED_RESERVED_PER_BLOCK = 65536, 228 * 1024, 1024


def nvcc_flags():
    return ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr",
            "-gencode", "arch=compute_90a,code=sm_90a", "-Xptxas", "-v,-warn-spills,-warn-lmem-usage",
            "-I", os.path.join(ROOT, "csrc"), "-isystem", setup.cutlass_include_dir()]


def compile_head_dim(nvcc, cuobjdump, head_dim, workdir):
    source = os.path.join(ROOT, "csrc", "cuda", "hopper", f"forward_hdim{head_dim}.cu")
    obj = os.path.join(workdir, f"forward_hdim{head_dim}.o")
    done = subprocess.run([nvcc, *nvcc_flags(), "-c", source, "-o", obj], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"sass_gate_hopper: nvcc failed for head dim {head_dim}:\n{done.stderr}")
    return done.stderr, disassemble(cuobjdump, obj)


def check_fragment_layouts(nvcc, failures):
    """Compiles and runs benchmarks/hopper_fragment_layouts.cu (host only)."""
    source = os.path.join(ROOT, "benchmarks", "hopper_fragment_layouts.cu")
    with tempfile.TemporaryDirectory() as workdir:
        program = os.path.join(workdir, "hopper_fragment_layouts")
        flags = [f for f in nvcc_flags() if not f.startswith(("-gencode", "arch=", "-Xptxas", "-v,"))]
        built = subprocess.run([nvcc, *flags, source, "-o", program], capture_output=True, text=True)
        if built.returncode != 0:
            failures.append(f"hopper_fragment_layouts.cu did not compile:\n{built.stderr}")
            return
        ran = subprocess.run([program], capture_output=True, text=True)
    print(ran.stdout, end="")
    if ran.returncode != 0:
        failures.append("the kernel's register-layout assumptions disagree with CuTe's layouts (above)")


def loops(instructions):
    """(start, end) of every backward branch's loop."""
    found = []
    for address, opcode, text, _ in instructions:
        m = re.search(r"BRA\s+(?:\S+\s+)?(0x[0-9a-f]+)", text) if opcode.startswith("BRA") else None
        if m and int(m.group(1), 16) <= address:
            found.append((int(m.group(1), 16), address))
    return found


def interior_loop(instructions, hgmma_per_tile):
    """The leanest loop holding exactly one tile's HGMMAs (the unmasked tile
    loop; the masked one is longer, the spin-wait retries span the kernel)."""
    best = None
    for start, end in loops(instructions):
        body = [(a, op, text) for a, op, text, _ in instructions if start <= a <= end]
        if sum(op.startswith("HGMMA") for _, op, _ in body) == hgmma_per_tile and (best is None or len(body) < len(best)):
            best = body
    return best


def exponentials_under_pv(body):
    """MUFU.EX2 after the loop's DEPBAR.LE 0x1 and before a DEPBAR.LE 0x0
    (the wait for P·V), following the loop round once."""
    texts = [text for _, _, text in body]
    first = next((i for i, t in enumerate(texts) if "WARPGROUP.DEPBAR.LE gsb0, 0x1" in t), None)
    if first is None:
        return 0
    count = 0
    for text in texts[first + 1:] + texts[:first]:
        if "WARPGROUP.DEPBAR.LE gsb0, 0x0" in text:
            break
        count += text.startswith("MUFU.EX2")
    return count


def producer_registers(instructions):
    """(registers the producer branch uses, what setmaxnreg gives it), or None.
    The branch runs from USETMAXREG.DEALLOC to the end, less the consumers'
    spin-wait retries placed after it (blocks that branch back before it)."""
    start = next((a for a, op, _, _ in instructions if op.startswith("USETMAXREG.DEALLOC")), None)
    if start is None:
        return None
    limit = int(re.search(r"(0x[0-9a-f]+|\d+)\s*$", next(t for a, _, t, _ in instructions if a == start)).group(1), 0)
    highest, block = -1, []
    for address, opcode, text, predicated in instructions:
        if address < start:
            continue
        block.append(text)
        if (opcode.startswith("BRA") and not predicated) or opcode.startswith("EXIT"):
            m = re.search(r"BRA\s+(?:\S+\s+)?(0x[0-9a-f]+)", text)
            if not (m and int(m.group(1), 16) < start):
                highest = max([highest] + [int(r) for t in block for r in re.findall(r"\bR(\d+)\b", t)])
            block = []
    return highest + 1, limit


def shared_bytes(head_dim):
    """The block's dynamic shared memory (forward_traits.cuh's kSharedBytes):
    SharedStorage holds Q, the K and V stages and 9 mbarriers of 8 bytes (two
    rings of full and empty barriers per stage, and Q's); its 1024-byte
    aligned members round its size up to a multiple of 1024; the launch asks
    1 KiB more, to align it by hand."""
    tile = lambda rows: rows * head_dim * ELEMENT_BYTES  # noqa: E731
    storage = tile(BLOCK_M) + 2 * STAGES * tile(BLOCK_N[head_dim]) + 8 * (4 * STAGES + 1)
    return -(-storage // 1024) * 1024 + 1024


def occupancy(registers, head_dim):
    by_registers = REGISTER_FILE // (registers * THREADS)
    by_shared = SHARED_PER_SM // (shared_bytes(head_dim) + SHARED_RESERVED_PER_BLOCK)
    return min(by_registers, by_shared), by_registers, by_shared


HEADER = ("| kernel | regs | stack | spill | producer regs / limit | HGMMA per tile | instr per tile | instr per 128 keys "
          "| limit | DEPBAR 0x1 | EX2 under P·V | named barriers | smem KiB | blocks/SM (regs, smem) |")


def check(label, log, functions, head_dim, failures):
    usage = ptxas_usage(log)
    names = [n for n in functions if "hopper_forward_kernel" in n and f"Li{head_dim}E" in n and label in n]
    if len(names) != 1:
        failures.append(f"{label} d={head_dim}: kernel not found in the SASS")
        return None
    name, instructions = names[0], functions[names[0]]
    regs, stack, spill_st, spill_ld = usage.get(name, (0, 0, 0, 0))
    tag = f"forward {'bf16' if 'bfloat16' in label else 'fp16'} d={head_dim}"
    if stack or spill_st or spill_ld:
        failures.append(f"{tag}: {stack} bytes of stack, {spill_st + spill_ld} of spills")
    producer = producer_registers(instructions)
    if producer is None or not any(op.startswith("USETMAXREG.TRY_ALLOC") for _, op, _, _ in instructions):
        failures.append(f"{tag}: no setmaxnreg for the producer and the consumers")
    elif producer[0] > producer[1]:
        failures.append(f"{tag}: the producer uses {producer[0]} registers, above its setmaxnreg {producer[1]}")
    # bar.sync 0 is __syncthreads; the ping-pong's ids are counted from 8.
    named = sum(op.startswith(("BAR.SYNC", "BAR.ARV")) and not re.search(r"BAR\.\w+(\.\w+)* 0x0\b", t)
                for _, op, t, _ in instructions)
    if not named:
        failures.append(f"{tag}: no named barriers (the consumers' ping-pong)")
    hgmma_per_tile = head_dim // 16 + BLOCK_N[head_dim] // 16
    body = interior_loop(instructions, hgmma_per_tile)
    if body is None:
        failures.append(f"{tag}: no interior tile loop with {hgmma_per_tile} HGMMAs")
        return None
    depbar_1 = any("WARPGROUP.DEPBAR.LE gsb0, 0x1" in t for _, _, t in body)
    under_pv = exponentials_under_pv(body)
    per_128 = len(body) * 128 / BLOCK_N[head_dim]
    if not depbar_1:
        failures.append(f"{tag}: no WARPGROUP.DEPBAR.LE gsb0, 0x1 in the interior loop")
    scores = 64 * BLOCK_N[head_dim] // 128  # exponentials per thread per tile
    if under_pv < scores:
        failures.append(f"{tag}: {under_pv} of {scores} exponentials run under P·V")
    if per_128 > LIMITS[head_dim]:
        failures.append(f"{tag}: {per_128:.0f} instructions per 128 keys, above the limit {LIMITS[head_dim]}")
    blocks, by_regs, by_smem = occupancy(regs, head_dim)
    if blocks < 1:
        failures.append(f"{tag}: no block fits on an SM")
    return (f"| {tag} | {regs} | {stack} | {spill_st + spill_ld} | {producer[0] if producer else '-'} / "
            f"{producer[1] if producer else '-'} | {hgmma_per_tile} | {len(body)} | {per_128:.0f} | {LIMITS[head_dim]} "
            f"| {'yes' if depbar_1 else 'NO'} | {under_pv} of {scores} | {named} "
            f"| {shared_bytes(head_dim) / 1024:.1f} | {blocks} ({by_regs}, {by_smem}) |")


def main():
    args = gate_arguments(__doc__.splitlines()[0])
    nvcc, compiled = compile_head_dims(compile_head_dim, HEAD_DIMS, args.jobs)
    rows = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    failures = []
    check_fragment_layouts(nvcc, failures)
    for head_dim, (log, sass) in compiled.items():
        serialized = [line for line in log.splitlines() if re.search(r"wgmma.*serializ|Potential Performance Loss", line)]
        failures += [f"d={head_dim}: ptxas: {line.strip()}" for line in serialized]
        functions = sass_functions(sass, with_predicate=True)
        for label in ("6half_t", "10bfloat16_t"):
            row = check(label, log, functions, head_dim, failures)
            if row:
                rows.append(row)
    heading = (f"# Static gate: the Hopper forward (sm_90a)\n\n{machine_line(nvcc, 'sm_90a (fp16 and bf16)')}\n\n"
               f"Per consumer warp; `{os.path.relpath(__file__, ROOT)}`, the checks and limits in its docstring. "
               f"Target at head dim 128: about {TARGET_128} instructions per 128 keys (FlashAttention-3: about 470).")
    return report("\n".join(rows), failures, args.out, heading, "sass gate (Hopper)")


if __name__ == "__main__":
    sys.exit(main())
