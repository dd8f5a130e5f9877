"""CUDA: tensors past 2³¹ elements, whose element offsets need 64-bit
indexing: once on the query side (query, output, their gradients: one head
of 2²⁵ rows), once on the key side (key, value, their gradients: 32,784
heads of 1024 keys), in fp16 (tensor cores) and float32 (scalar kernels).
Outputs are poisoned with NaN, so a block that never ran shows; slices at
the start, the middle and the end meet the dtype rule against the float64
reference. (Grids past 65535 (batch, head) pairs: test_cuda.py.)

Skipped, with the reason, without a GPU, without the CUDA kernels, or with
less free GPU memory than a test needs (up to 48 GiB: an 80 GB H100 runs
them all)."""
import pytest
import torch

from helpers.cuda import DEVICE, requires_cuda_kernels
from helpers.reference import (RESULT_NAMES, assert_within_dtype_rule, ours, poisoned_outputs, pytorch_results,
                               reference, run_attention)

pytestmark = requires_cuda_kernels

ELEMENTS = 2**31 + 2**20  # past the largest int32
DTYPES = [pytest.param(torch.float16, id="fp16"), pytest.param(torch.float32, id="fp32")]
# Rows of the float64 reference at a time, for the key-side gradients that sum over all rows.
REFERENCE_ROWS = 2**21


def skip_unless_free(gib):
    free = torch.cuda.mem_get_info()[0] / 2**30
    if free < gib:
        pytest.skip(f"needs {gib} GiB of free GPU memory, {free:.0f} GiB free")


def leaves(shapes, dtype, seed):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    return [torch.randn(s, generator=g, device=DEVICE, dtype=dtype).requires_grad_() for s in shapes]


def run_poisoned(q, k, v, grad_out):
    with poisoned_outputs():
        results = run_attention(ours, q, k, v, None, grad_out)
    for name, t in zip(RESULT_NAMES, results):
        assert not t.isnan().any(), f"{name}: NaN somewhere in the result (a block never ran?)"
    return results


def check_slice(results, q, k, v, grad_out, dim, start, size, names):
    """The named results, narrowed to [start, start + size) along dim, against
    PyTorch and the reference run on the same narrowed inputs (k and v are
    narrowed only where they have that dim's extent)."""
    part = [t.detach().narrow(dim, start, size) if t.shape[dim] == q.shape[dim] else t.detach() for t in (q, k, v)]
    part = [t.requires_grad_() for t in part]
    part_grad = grad_out.narrow(dim, start, size)
    pytorch = pytorch_results(*part, None, part_grad)
    expected = reference(*part, None, part_grad)
    for name, got, b, c in zip(RESULT_NAMES, results, pytorch, expected):
        if name in names:
            assert_within_dtype_rule(f"{name}[{start}:{start + size}]", got.narrow(dim, start, size), b, c)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_query_side_tensors_past_2_31_elements(dtype):
    E, S = 64, 64
    L = ELEMENTS // E
    skip_unless_free(36 if dtype == torch.float16 else 48)
    q, k, v, grad_out = leaves([(1, 1, L, E), (1, 1, S, E), (1, 1, S, E), (1, 1, L, E)], dtype, seed=1)
    grad_out = grad_out.detach()
    out, dq, dk, dv = run_poisoned(q, k, v, grad_out)
    # A row's output and dQ depend on its own query row only.
    for start in (0, L // 2, L - 256):
        check_slice([out, dq], q, k, v, grad_out, 2, start, 256, ["output", "grad_query"])
    # dK and dV sum over all 2²⁵ rows: the float64 reference summed over
    # chunks of rows. Summing 2²⁵ terms in float32 may drift past one
    # rounding, so the bound is relative, 1e-2 of the largest element.
    expected_dk, expected_dv = torch.zeros_like(dk, dtype=torch.float64), torch.zeros_like(dv, dtype=torch.float64)
    for start in range(0, L, REFERENCE_ROWS):
        rows = min(REFERENCE_ROWS, L - start)
        part_q = q.detach().narrow(2, start, rows).requires_grad_()
        _, _, part_dk, part_dv = reference(part_q, k, v, None, grad_out.narrow(2, start, rows))
        expected_dk += part_dk
        expected_dv += part_dv
    for name, got, expected in [("grad_key", dk, expected_dk), ("grad_value", dv, expected_dv)]:
        tolerance = 1e-2 * max(expected.abs().max().item(), 1.0)
        error = (got.double() - expected).abs().max().item()
        assert error <= tolerance, f"{name}: error {error:.3g} against float64, bound {tolerance:.3g}"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_key_side_tensors_past_2_31_elements(dtype):
    L, S, E = 16, 1024, 64
    H = -(-ELEMENTS // (S * E))
    skip_unless_free(24 if dtype == torch.float16 else 44)
    q, k, v, grad_out = leaves([(1, H, L, E), (1, H, S, E), (1, H, S, E), (1, H, L, E)], dtype, seed=2)
    grad_out = grad_out.detach()
    results = run_poisoned(q, k, v, grad_out)
    # Heads are independent: every result of a slice of heads is checked.
    for start in (0, H // 2, H - 64):
        check_slice(results, q, k, v, grad_out, 1, start, 64, RESULT_NAMES)
