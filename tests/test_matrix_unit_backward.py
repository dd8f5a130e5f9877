"""The bfloat16 backward on the CPU's matrix units (csrc/cpu/matrix_unit_backward.cpp)
at the edges of its tiles: tiles of query rows and of keys with odd counts
(whose products pad a zero row or column), lengths past one tile of 256 query
rows or 512 keys, causal masks with L > S and L < S, GQA groups whose dK and
dV sum over query heads, head dims 32 to 128 with a different value dim, and
inputs that are views (transposed rows, which the products cannot read in
place). Each against the float64 reference with the dtype rule."""
import pytest
import torch

import torch_selfattn  # noqa: F401 (registers the ops)

from helpers.reference import check_against_reference

ops = torch.ops.selfattn

pytestmark = pytest.mark.skipif(
    ops.cpu_kernel_paths()[1] != "matrix units (AMX)", reason="this CPU has no matrix units for bfloat16"
)


def rand(*shape, generator):
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(torch.bfloat16).requires_grad_()


@pytest.mark.parametrize(
    "L, S, E, Ev, causal",
    [
        (300, 300, 64, 64, True),
        (129, 257, 32, 16, False),
        (77, 600, 64, 32, True),
        (600, 77, 64, 32, True),
        (513, 1025, 128, 64, False),
        (257, 513, 96, 96, True),
    ],
)
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_matches_reference(L, S, E, Ev, causal, kv_heads):
    g = torch.Generator().manual_seed(L * 7 + S)
    q, k, v = rand(2, 4, L, E, generator=g), rand(2, kv_heads, S, E, generator=g), rand(2, kv_heads, S, Ev, generator=g)
    check_against_reference(q, k, v, is_causal=causal, enable_gqa=kv_heads != 4)


def test_views_that_are_not_row_contiguous():
    g = torch.Generator().manual_seed(3)
    # (B, L, H, E) storage seen as (B, H, L, E): rows are strided by H·E.
    q, k, v = (rand(2, 200, 4, 64, generator=g).detach().transpose(1, 2).requires_grad_() for _ in range(3))
    check_against_reference(q, k, v, is_causal=True)
