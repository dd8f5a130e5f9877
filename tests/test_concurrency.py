"""Concurrency and state: the kernels keep no mutable global state, so calls
from many Python threads at once give exactly what the same calls give one
after another, and a dropout seed gives the same result whatever the number
of intra-op threads.

(The extension's only statics are function-local constants, set once in a
thread-safe initialiser: the dispatcher handles of the core ops
(csrc/api/core/op_calls.cpp), and what the CPU offers and what the environment
asks for (csrc/cpu/bf16_matrix_units.cpp, tile_gemm.cpp,
attention_backward.cpp). The dropout seed comes from PyTorch's generator,
under its lock.)"""
import contextlib
import threading

import pytest
import torch

from helpers.reference import check_against_reference, check_dropout_against_reference, dropout_multipliers, ours, run_attention

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


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=["fp32", "bf16", "fp64"])
def test_dropout_seed_gives_bitwise_the_same_result_at_any_thread_count(dtype):
    # The same weights dropped, and the same bits: the tile products run MKL
    # on one thread whatever the intra-op thread count (tile_gemm.cpp).
    q, k, v, mask, kwargs = call((dtype, True, False, "float", 300, 700))
    kept, runs = {}, {}
    for n in THREAD_COUNTS:
        with intra_op_threads(n):
            kept[n] = dropout_multipliers(q, k, 0.3, seed=5, enable_gqa=True) != 0
            torch.manual_seed(5)
            out = ours(q, k, v, attn_mask=mask, dropout_p=0.3, **kwargs)
            runs[n] = [out, *torch.autograd.grad(out.square().sum(), (q, k, v, mask))]
    for n in THREAD_COUNTS:
        assert torch.equal(kept[n], kept[1]), f"{n} threads drop other weights than 1 thread"
        for name, a, b in zip(["output", "grad_query", "grad_key", "grad_value", "grad_attn_mask"], runs[n], runs[1]):
            assert torch.equal(a, b), f"{name} with {n} threads differs from 1 thread"
    assert not torch.equal(runs[1][0], ours(q, k, v, attn_mask=mask, **kwargs)), "no weight was dropped"
    check_dropout_against_reference(q, k, v, mask, dropout_p=0.3, seed=5, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["fp32", "fp64", "bf16"])
@pytest.mark.parametrize("S", [513, 1100])
def test_mask_gradient_passes_get_the_same_bits_as_the_head_pass(dtype, S):
    """A zero bias that requires grad changes nothing but the path: its
    backward runs a query pass with one task (outside a parallel region) and
    a key pass with several, and both must recompute the scores to the same
    bits as the head pass does. They did not while MKL split products over
    its threads outside parallel regions: dK and dV of the first key tile
    were off by up to 8x PyTorch's error."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 25, 32, generator=g).to(dtype), torch.randn(1, 2, S, 32, generator=g).to(dtype)
    v, grad_out = torch.randn(1, 2, S, 8, generator=g).to(dtype), torch.randn(1, 2, 25, 8, generator=g).to(dtype)
    results = []
    for mask_grad in (False, True):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        mask = torch.zeros(1, 1, 1, dtype=dtype, requires_grad=mask_grad)
        results.append(run_attention(ours, *leaves, mask, grad_out, scale=2.5))
    for name, a, b in zip(["output", "grad_query", "grad_key", "grad_value"], *results):
        assert torch.equal(a, b), name
