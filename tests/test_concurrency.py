"""Concurrency and state: the kernels keep no mutable global state, so calls
from many Python threads at once give exactly what the same calls give one
after another, and a dropout seed gives the same result whatever the number
of intra-op threads.

(The extension's only statics are function-local constants, set once in a
thread-safe initialiser: the dispatcher handles of the core ops
(csrc/api/op_calls.cpp), and what the CPU offers and what the environment
asks for (csrc/cpu/bf16_matrix_units.cpp, tile_gemm.cpp,
attention_backward.cpp). The dropout seed comes from PyTorch's generator,
under its lock.)"""
import contextlib
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

from reference import check_against_reference, check_dropout_against_reference, dropout_multipliers, ours

THREADS = 8
ROUNDS = 3
THREAD_COUNTS = (1, 2, 3, 4)


def call(case):
    """(output, dq, dk, dv[, dmask]) of one case, from fresh inputs."""
    dtype, gqa, causal, mask_kind, L, S = case
    g = torch.Generator().manual_seed(L * 1000 + S)
    H = 1 if gqa else 4
    q = torch.randn(2, 4, L, 32, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    k = torch.randn(2, H, S, 32, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    v = torch.randn(2, H, S, 16, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    mask = None
    if mask_kind == "bool":
        mask = torch.rand(L, S, generator=g) > 0.2
    elif mask_kind == "float":
        mask = torch.randn(1, 4, L, S, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    return q, k, v, mask, dict(is_causal=causal, enable_gqa=gqa)


def results(case):
    q, k, v, mask, kwargs = call(case)
    out = ours(q, k, v, attn_mask=mask, **kwargs)
    leaves = [q, k, v] + ([mask] if mask is not None and mask.requires_grad else [])
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    return [out.detach(), *torch.autograd.grad(out, leaves, grad_out)]


# (dtype, GQA, causal, mask, L, S): each thread takes a different one.
CASES = [
    (torch.float32, False, False, None, 200, 700),
    (torch.bfloat16, True, True, None, 300, 300),
    (torch.float16, False, False, "bool", 130, 513),
    (torch.float64, True, False, "float", 64, 200),
    (torch.float32, False, True, None, 129, 129),
    (torch.bfloat16, False, False, "float", 100, 600),
    (torch.float32, True, False, "bool", 257, 64),
    (torch.float16, False, True, None, 40, 1000),
]


def test_threads_calling_forward_and_backward_at_once_get_the_serial_results():
    serial = [results(case) for case in CASES]
    got = [[None] * ROUNDS for _ in range(THREADS)]
    errors = []
    start = threading.Barrier(THREADS)

    def worker(i):
        try:
            start.wait()
            for r in range(ROUNDS):
                got[i][r] = results(CASES[i])
        except BaseException as error:  # reported below, with the thread
            errors.append((i, error))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, case in enumerate(CASES):
        for r in range(ROUNDS):
            for a, b in zip(got[i][r], serial[i]):
                assert torch.equal(a, b), f"thread {i} ({case}), round {r}: differs from the serial run"


def test_the_serial_results_are_right():
    # What the threads are compared with is itself correct.
    for case in CASES:
        q, k, v, mask, kwargs = call(case)
        check_against_reference(q, k, v, attn_mask=mask, **kwargs)


@contextlib.contextmanager
def intra_op_threads(n):
    was = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(was)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=["fp32", "bf16", "fp64"])
def test_dropout_seed_drops_the_same_weights_at_any_thread_count(dtype):
    q, k, v, mask, kwargs = call((dtype, True, False, "float", 300, 700))
    kept = {}
    for n in THREAD_COUNTS:
        with intra_op_threads(n):
            kept[n] = dropout_multipliers(q, k, 0.3, seed=5, enable_gqa=True) != 0
            check_dropout_against_reference(q, k, v, mask, dropout_p=0.3, seed=5, **kwargs)
    for n in THREAD_COUNTS:
        assert torch.equal(kept[n], kept[1]), f"{n} threads drop other weights than 1 thread"


# Bitwise equality across thread counts holds for our kernels; MKL's sgemm
# and dgemm, which the float tile products call by default, round
# differently with one intra-op thread (called outside a parallel region)
# than with several. With our portable products every result is the same.
CHILD = textwrap.dedent(
    """
    import torch, torch_selfattn
    g = torch.Generator().manual_seed(0)
    results = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        q = torch.randn(2, 4, 300, 32, generator=g).to(dtype).requires_grad_()
        k = torch.randn(2, 1, 700, 32, generator=g).to(dtype).requires_grad_()
        v = torch.randn(2, 1, 700, 16, generator=g).to(dtype).requires_grad_()
        mask = torch.randn(1, 4, 300, 700, generator=g).to(dtype).requires_grad_()
        runs = []
        for n in %(threads)s:
            torch.set_num_threads(n)
            torch.manual_seed(5)
            out = torch_selfattn.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.3, enable_gqa=True)
            runs.append([out, *torch.autograd.grad(out.square().sum(), (q, k, v, mask))])
        same = all(torch.equal(a, b) for run in runs for a, b in zip(run, runs[0]))
        print(dtype, "bitwise equal" if same else "DIFFERENT")
    """
) % {"threads": THREAD_COUNTS}


def test_dropout_seed_gives_bitwise_the_same_result_at_any_thread_count_with_portable_products():
    env = {**os.environ, "TORCH_SELFATTN_PORTABLE_GEMM": "1"}
    result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    assert lines == [f"{dtype} bitwise equal" for dtype in (torch.float32, torch.bfloat16, torch.float64)], (
        result.stdout)
