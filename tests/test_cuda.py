"""The CUDA kernels against the float64 reference (tests/helpers/reference.py):
fp16 and bf16 on the tensor-core path over every head dim up to 256 (odd
ones padded), the scalar path (fp32, fp64, head dims past 256), masks, GQA,
causal with L ≠ S, scales, strided layouts, grids past 65535 blocks and
gradcheck. The runtime features (dropout, CUDA graphs, torch.compile,
opcheck, devices) are in tests/test_cuda_runtime.py.

Skipped, with the reason, where there is no GPU or the library was built
without its CUDA kernels."""
import pytest
import torch

from helpers.cuda import DEVICE, HALF_DTYPES, HALF_IDS, cuda_qkv, cuda_randn, make_mask, requires_cuda_kernels
from helpers.reference import (RESULT_NAMES, assert_within_dtype_rule, check_against_reference, ours, poisoned_outputs,
                               pytorch_results, reference, run_attention)

pytestmark = requires_cuda_kernels

# --- tensor-core path: every head dim, sparse over lengths and causal ---

HEAD_DIMS = [32, 40, 59, 64, 80, 96, 111, 128, 160, 192, 224, 256]
LENGTH_PAIRS = [(113, 203), (128, 217), (108, 256), (1023, 1024), (1, 1), (257, 31)]


def head_dim_cases():
    """Each head dim once per half dtype, with causal on for one of the two;
    the (L, S) pairs rotate so that each meets several head dims, both dtypes
    and both causal settings, without the full cross product."""
    cases = []
    for d, dtype in enumerate(HALF_DTYPES):
        for i, E in enumerate(HEAD_DIMS):
            L, S = LENGTH_PAIRS[(i + 3 * d) % len(LENGTH_PAIRS)]
            causal = (i + d) % 2 == 1
            name = f"{HALF_IDS[d]}-E{E}-L{L}-S{S}-{'causal' if causal else 'full'}"
            cases.append(pytest.param(dtype, E, L, S, causal, id=name))
    return cases


@pytest.mark.parametrize("dtype,E,L,S,causal", head_dim_cases())
def test_head_dims_and_lengths(dtype, E, L, S, causal):
    B, H = (1, 2) if L * S > 500_000 else (2, 3)
    q, k, v = cuda_qkv(dtype, B=B, Hq=H, L=L, S=S, E=E, seed=E * 1000 + L)
    check_against_reference(q, k, v, is_causal=causal)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=HALF_IDS)
@pytest.mark.parametrize("E,Ev", [(64, 128), (128, 64), (40, 72), (256, 32), (32, 256)])
def test_value_dim_differs(dtype, E, Ev):
    q, k, v = cuda_qkv(dtype, L=100, S=150, E=E, Ev=Ev, seed=E + Ev)
    check_against_reference(q, k, v)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=HALF_IDS)
@pytest.mark.parametrize("E,Ev", [(288, 64), (64, 320)], ids=["E288", "Ev320"])
def test_head_dims_past_256_take_the_scalar_path(dtype, E, Ev):
    q, k, v = cuda_qkv(dtype, Hq=2, L=90, S=75, E=E, Ev=Ev, seed=E)
    check_against_reference(q, k, v, is_causal=True)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=HALF_IDS)
@pytest.mark.parametrize("H", [2, 1], ids=["gqa", "mqa"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_grouped_and_multi_query(dtype, H, causal):
    q, k, v = cuda_qkv(dtype, Hq=8, H=H, L=150, S=200, E=64 if causal else 128, seed=H + 10 * causal)
    check_against_reference(q, k, v, is_causal=causal, enable_gqa=True)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=HALF_IDS)
@pytest.mark.parametrize("L,S", [(200, 70), (70, 200), (1, 300), (300, 1)])
def test_causal_top_left_with_lengths_that_differ(dtype, L, S):
    # Top-left aligned: with L > S the rows past S see every key; with L < S
    # the last keys are seen by no row (their dK and dV are 0).
    q, k, v = cuda_qkv(dtype, L=L, S=S, E=64, seed=L + S)
    check_against_reference(q, k, v, is_causal=True)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=HALF_IDS)
@pytest.mark.parametrize("scale", [0.3, 2.0, -0.7])
def test_scale(dtype, scale):
    q, k, v = cuda_qkv(dtype, L=65, S=140, E=96, seed=3)
    check_against_reference(q, k, v, scale=scale)


# --- masks ---

MASK_B, MASK_H, MASK_L, MASK_S = 2, 3, 70, 130
MASK_SHAPES = [(MASK_L, MASK_S), (1, 1, MASK_L, MASK_S), (MASK_B, 1, 1, MASK_S), (1, MASK_H, MASK_L, 1)]
MASK_KINDS = ["bool", "query_dtype_grad", "float32"]


def mask_cases():
    """Every shape with every kind; the dtype alternates between fp16 and bf16."""
    cases = []
    for i, shape in enumerate(MASK_SHAPES):
        for j, kind in enumerate(MASK_KINDS):
            d = (i + j) % 2
            name = f"{HALF_IDS[d]}-{kind}-{'x'.join(map(str, shape))}"
            cases.append(pytest.param(HALF_DTYPES[d], kind, shape, id=name))
    return cases


@pytest.mark.parametrize("dtype,kind,shape", mask_cases())
def test_masks(dtype, kind, shape):
    q, k, v = cuda_qkv(dtype, B=MASK_B, Hq=MASK_H, L=MASK_L, S=MASK_S, E=64, Ev=40, seed=len(shape))
    mask = make_mask(kind, shape, dtype, torch.Generator().manual_seed(sum(shape)))
    got = check_against_reference(q, k, v, attn_mask=mask)
    if mask.requires_grad:
        assert len(got) == 5 and got[4].shape == mask.shape


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=HALF_IDS)
@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_fully_masked_rows_give_zero_output_and_query_gradient(dtype, mask_kind):
    q, k, v = cuda_qkv(dtype, L=80, S=150, E=64, seed=13)
    keep = torch.rand(2, 1, 80, 150, generator=torch.Generator().manual_seed(14)) > 0.5
    keep[:, :, [3, 70]] = False  # rows 3 and 70 see no key at all
    keep = keep.to(DEVICE)
    mask = keep if mask_kind == "bool" else torch.zeros(keep.shape, dtype=dtype, device=DEVICE).masked_fill(
        ~keep, float("-inf"))
    out, dq, dk, dv = check_against_reference(q, k, v, attn_mask=mask)
    assert (out[:, :, [3, 70]] == 0).all()
    assert (dq[:, :, [3, 70]] == 0).all()


# --- layouts ---

@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=HALF_IDS)
@pytest.mark.parametrize("layout", ["transposed", "sliced_aligned", "sliced_unaligned"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_non_contiguous(dtype, layout, causal):
    q, k, v = cuda_qkv(dtype, Hq=4, L=90, S=130, E=64, Ev=32, seed=5, layout=layout)
    assert not q.is_contiguous() and not k.is_contiguous() and not v.is_contiguous()
    if layout.startswith("sliced"):
        assert q.storage_offset() > 0
    check_against_reference(q, k, v, is_causal=causal)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=HALF_IDS)
@pytest.mark.parametrize("kv_base", [(1, 1), (3, 1)], ids=["batch_and_heads", "heads"])
def test_expanded_key_value(dtype, kv_base):
    # Stride-0 batch and head dims, as from expand(): read in place.
    g = torch.Generator().manual_seed(11)
    q = cuda_randn((3, 4, 50, 64), dtype, g)
    k_base = cuda_randn((*kv_base, 80, 64), dtype, g)
    v_base = cuda_randn((*kv_base, 80, 64), dtype, g)
    k, v = k_base.expand(3, 4, 80, 64), v_base.expand(3, 4, 80, 64)
    assert 0 in k.stride()
    check_against_reference(q, k, v)


# --- scalar path: fp32 and fp64 ---

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize(
    "case",
    [
        dict(L=113, S=203, E=64),
        dict(L=257, S=31, E=40, is_causal=True),
        dict(L=1, S=1, E=111),
        dict(L=100, S=150, E=59, Ev=24, Hq=4, H=2, enable_gqa=True, is_causal=True),
        dict(L=70, S=130, E=32, mask="float_grad", scale=-0.6),
        dict(L=70, S=130, E=32, mask="bool", layout="transposed"),
    ],
    ids=["plain", "causal_L>S", "one_by_one", "gqa_causal", "float_mask_grad", "bool_mask_transposed"],
)
def test_float32_and_float64(dtype, case):
    case = dict(case)
    mask_kind = case.pop("mask", None)
    shape_args = {name: case.pop(name) for name in ("L", "S", "E", "Ev", "Hq", "H", "layout") if name in case}
    q, k, v = cuda_qkv(dtype, seed=shape_args["L"], **shape_args)
    mask = None
    if mask_kind is not None:
        kind = "bool" if mask_kind == "bool" else "query_dtype_grad"
        mask = make_mask(kind, (1, 1, shape_args["L"], shape_args["S"]), dtype, torch.Generator().manual_seed(1))
    check_against_reference(q, k, v, attn_mask=mask, **case)


# --- grids with more than 65535 (batch, head) pairs ---

@pytest.mark.parametrize("B,H", [(70000, 1), (1, 70000)], ids=["batch70000", "heads70000"])
def test_grid_past_65535(B, H):
    """All of a (B, H) with B·H > 65535 is computed (the poison leaves no
    NaN) and slices at the start, middle and end match the reference."""
    q, k, v = cuda_qkv(torch.float16, B=B, Hq=H, L=5, S=16, E=32, seed=17)
    grad_out = torch.randn(B, H, 5, 32, generator=torch.Generator().manual_seed(18), dtype=torch.float64)
    grad_out = grad_out.to(DEVICE, torch.float16)
    with poisoned_outputs():
        got = run_attention(ours, q, k, v, None, grad_out)
    for name, t in zip(RESULT_NAMES, got):
        assert not t.isnan().any(), f"{name}: NaN somewhere in the result (a block never ran?)"
    big = 0 if B > 1 else 1
    n = B * H
    for start in (0, n // 2, n - 64):
        part = [t.detach().narrow(big, start, 64).requires_grad_() for t in (q, k, v)]
        part_grad = grad_out.narrow(big, start, 64)
        pytorch = pytorch_results(*part, None, part_grad)
        expected = reference(*part, None, part_grad)
        for name, a, b, c in zip(RESULT_NAMES, got, pytorch, expected):
            assert_within_dtype_rule(f"{name}[{start}:{start + 64}]", a.narrow(big, start, 64), b, c)


# --- gradcheck in float64 on the device ---

def gradcheck_mask(kind):
    """None, a float mask of the given shape, or "masked_rows": a (6, 9) mask
    with a partly and a fully masked row; requiring grad."""
    if kind is None:
        return None
    mask = torch.randn((6, 9) if kind == "masked_rows" else kind, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(2))
    if kind == "masked_rows":
        mask[1, ::2] = float("-inf")
        mask[4] = float("-inf")
    return mask.to(DEVICE).requires_grad_()


@pytest.mark.parametrize(
    "H,L,S,causal,mask_kind",
    [
        (4, 6, 9, True, None),
        (2, 9, 6, True, None),
        (2, 6, 9, False, (1, 4, 6, 9)),
        (2, 6, 9, False, (6, 9)),
        (2, 6, 9, False, (1, 1, 6, 1)),
        (4, 6, 9, False, "masked_rows"),
    ],
    ids=["causal", "causal_gqa_L>S", "mask_full_gqa", "mask_2d_gqa", "mask_rows_gqa", "masked_rows"],
)
def test_gradcheck(H, L, S, causal, mask_kind):
    g = torch.Generator().manual_seed(L)
    inputs = [cuda_randn(shape, torch.float64, g) for shape in ((1, 4, L, 5), (1, H, S, 5), (1, H, S, 3))]
    mask = gradcheck_mask(mask_kind)
    if mask is not None:
        inputs.append(mask)

    def attention(q, k, v, mask=None):
        return ours(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=H != 4, scale=0.7)

    assert torch.autograd.gradcheck(attention, tuple(inputs))
