"""Edge cases: a head dim of 1, scores around 1e4, -inf inside float masks,
NaN inputs, every row masked, a single key, and empty dims combined with
masks, causal masking and dropout.

Covered elsewhere and not repeated here: L = 0, S = 0, batch 0, E = 0 and
Ev = 0 against PyTorch's math path (test_numerics.py,
test_empty_inputs_match_pytorch_math); some rows fully masked
(test_numerics.py, test_fully_masked_rows_give_zero_output_and_gradients);
S = 1 without a mask (test_numerics.py, test_lengths); on CUDA, grids past
65535 (batch, head) pairs (test_cuda.py) and tensors past 2³¹ elements
(test_cuda_large.py)."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from helpers.reference import check_against_reference, ours, pytorch_sdpa, run_attention

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
DTYPE_IDS = ["fp32", "fp64", "bf16", "fp16"]
RESULT_NAMES = ["output", "grad_query", "grad_key", "grad_value", "grad_attn_mask"]


def leaf(shape, dtype, g, std=1.0):
    return (torch.randn(shape, generator=g, dtype=torch.float64) * std).to(dtype).requires_grad_()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("E,Ev", [(1, 1), (1, 16), (16, 1)])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_head_dim_one(dtype, E, Ev, causal):
    g = torch.Generator().manual_seed(E * 100 + Ev)
    q, k, v = leaf((2, 3, 70, E), dtype, g), leaf((2, 3, 150, E), dtype, g), leaf((2, 3, 150, Ev), dtype, g)
    check_against_reference(q, k, v, is_causal=causal)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_scores_around_1e4_do_not_overflow(dtype, causal):
    # q·k ~ 1e4 with scale 1: exp of unshifted scores would overflow every
    # dtype, float64 included. The online softmax must shift by the running max.
    g = torch.Generator().manual_seed(7)
    q, k = leaf((1, 2, 130, 16), dtype, g, std=25.0), leaf((1, 2, 600, 16), dtype, g, std=25.0)
    v = leaf((1, 2, 600, 16), dtype, g)
    scores = q.detach().double() @ k.detach().double().transpose(-2, -1)
    assert scores.abs().max() > 5e3
    out, *grads = check_against_reference(q, k, v, is_causal=causal, scale=1.0)
    assert torch.isfinite(out).all() and all(torch.isfinite(t).all() for t in grads)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("mask_dtype", ["float32", "query_dtype"])
def test_minus_infinity_inside_float_masks(dtype, mask_dtype):
    # A learned bias with -inf entries scattered through it (and one row all
    # -inf): the gradient of the bias is 0 at every -inf entry, as PyTorch's.
    g = torch.Generator().manual_seed(11)
    q, k, v = leaf((2, 2, 40, 16), dtype, g), leaf((2, 2, 530, 16), dtype, g), leaf((2, 2, 530, 8), dtype, g)
    mask = torch.randn(2, 1, 40, 530, generator=g, dtype=torch.float64)
    mask[torch.rand(mask.shape, generator=g) < 0.2] = float("-inf")
    mask[1, 0, 17] = float("-inf")
    mask = mask.to(torch.float32 if mask_dtype == "float32" else dtype).requires_grad_()
    out, dq, dk, dv, dmask = check_against_reference(q, k, v, attn_mask=mask)
    assert (dmask[mask.detach() == float("-inf")] == 0).all()
    assert (out[1, :, 17] == 0).all() and (dq[1, :, 17] == 0).all()


def math_sdpa(*args, **kwargs):
    with sdpa_kernel([SDPBackend.MATH]):
        return pytorch_sdpa(*args, **kwargs)


def nan_positions(fn, q, k, v, attn_mask, grad_out, **kwargs):
    return [t.isnan() for t in run_attention(fn, q, k, v, attn_mask, grad_out, **kwargs)]


def with_nan(t, index):
    t = t.detach().clone()
    t[index] = float("nan")
    return t.requires_grad_(t.is_floating_point())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("where,mask", [(where, mask) for where in ["query", "key", "value"]
                                        for mask in [None, "bool", "float"]] + [("float_mask", "float")])
def test_nan_propagates_as_in_pytorch_math(dtype, where, mask):
    """A NaN in an input reaches exactly the elements of the output and of
    every gradient that PyTorch's math path makes NaN. A NaN score stays NaN
    under a boolean mask's False: PyTorch adds the mask's -inf rather than
    overwriting the score."""
    g = torch.Generator().manual_seed(13)
    q, k, v = leaf((2, 2, 9, 8), dtype, g), leaf((2, 2, 140, 8), dtype, g), leaf((2, 2, 140, 8), dtype, g)
    attn_mask = None
    if mask == "bool":
        attn_mask = torch.rand(9, 140, generator=g) > 0.3
        attn_mask[:, 70] = False  # the NaN key below is one that no row sees
    elif mask == "float":
        attn_mask = leaf((9, 140), dtype, g)
    index = {"query": (1, 0, 4, 3), "key": (0, 1, 70, 5), "value": (1, 1, 70, 2), "float_mask": (4, 70)}[where]
    if where == "float_mask":
        attn_mask = with_nan(attn_mask, index)
    else:
        q, k, v = (with_nan(t, index) if name == where else t for name, t in zip(["query", "key", "value"], (q, k, v)))
    grad_out = torch.randn(2, 2, 9, 8, generator=g, dtype=torch.float64).to(dtype)
    got = nan_positions(ours, q, k, v, attn_mask, grad_out)
    expected = nan_positions(math_sdpa, q, k, v, attn_mask, grad_out)
    assert got[0].any(), "the NaN reached no output element"
    for name, a, b in zip(RESULT_NAMES, got, expected):
        assert torch.equal(a, b), f"{name}: {int(a.sum())} NaN, PyTorch's math path {int(b.sum())}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_nan_query_row_under_causal_masking_stays_in_its_row(dtype):
    # Under causal masking PyTorch's math and default paths disagree on where
    # a NaN goes (math adds -inf to it, the default path skips hidden keys, as
    # our tiles do). What both agree on: a NaN in query row i makes output row
    # i NaN and no other row.
    g = torch.Generator().manual_seed(17)
    q = with_nan(leaf((1, 2, 200, 8), dtype, g), (0, 1, 150, 0))
    k, v = leaf((1, 2, 200, 8), dtype, g), leaf((1, 2, 200, 8), dtype, g)
    out = ours(q, k, v, is_causal=True)
    nan_rows = out.isnan().any(-1)
    expected = torch.zeros_like(nan_rows)
    expected[0, 1, 150] = True
    assert torch.equal(nan_rows, expected)
    assert out[0, 1, 150].isnan().all()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_every_row_masked(dtype, mask_kind):
    # Nothing to attend to anywhere: output and every gradient are 0, as in
    # PyTorch (whose math path takes a fully masked row to 0, not NaN).
    g = torch.Generator().manual_seed(19)
    q, k, v = leaf((2, 3, 30, 16), dtype, g), leaf((2, 3, 50, 16), dtype, g), leaf((2, 3, 50, 8), dtype, g)
    if mask_kind == "bool":
        mask = torch.zeros(2, 1, 30, 50, dtype=torch.bool)
    else:
        mask = torch.full((30, 50), float("-inf"), dtype=dtype).requires_grad_()
    results = check_against_reference(q, k, v, attn_mask=mask)
    for name, t in zip(RESULT_NAMES, results):
        assert (t == 0).all(), name


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", ["plain", "causal", "gqa", "float_mask", "dropout"])
def test_single_key(dtype, case):
    # With one key every probability is exactly 1 (or 0 where dropped), so
    # the output is value's row (times the dropout multiplier) and dQ is 0.
    g = torch.Generator().manual_seed(23)
    H = 1 if case == "gqa" else 4
    q, k, v = leaf((2, 4, 37, 16), dtype, g), leaf((2, H, 1, 16), dtype, g), leaf((2, H, 1, 24), dtype, g)
    kwargs = {"plain": {}, "causal": {"is_causal": True}, "gqa": {"enable_gqa": True},
              "float_mask": {"attn_mask": leaf((37, 1), dtype, g)}, "dropout": {"dropout_p": 0.5}}[case]
    torch.manual_seed(29)
    out = ours(q, k, v, **kwargs)
    leaves = [q, k, v] + ([kwargs["attn_mask"]] if case == "float_mask" else [])
    grads = torch.autograd.grad(out, leaves, torch.randn(out.shape, generator=g).to(dtype))
    v_rows = v.detach().expand(2, 4, 1, 24)
    if case == "dropout":
        kept = (out != 0).all(-1, keepdim=True)
        assert torch.equal(out, torch.where(kept, (v_rows * 2).expand_as(out), torch.zeros_like(out)))
        assert 0 < kept.sum() < kept.numel()
    else:
        assert torch.equal(out, v_rows.expand_as(out))
    assert (grads[0] == 0).all()
    if case == "float_mask":
        assert (grads[3] == 0).all()  # softmax over one key does not depend on the mask


@pytest.mark.parametrize(
    "q_shape,k_shape,v_shape",
    [((2, 3, 0, 8), (2, 3, 6, 8), (2, 3, 6, 4)), ((2, 3, 5, 8), (2, 3, 0, 8), (2, 3, 0, 4)),
     ((0, 3, 5, 8), (0, 3, 6, 8), (0, 3, 6, 4))],
    ids=["L0", "S0", "batch0"],
)
@pytest.mark.parametrize("extra", ["causal", "bool_mask", "float_mask_grad", "dropout", "gqa"])
def test_empty_dims_with_masks_causal_dropout_and_gqa(q_shape, k_shape, v_shape, extra):
    """The shapes and values of PyTorch's math path: L = 0 gives an empty
    output, S = 0 rows of zeros (nothing to attend to), and every gradient
    is zeros of its input's shape."""
    g = torch.Generator().manual_seed(31)
    if extra == "gqa":
        k_shape, v_shape = (k_shape[0], 1, *k_shape[2:]), (v_shape[0], 1, *v_shape[2:])
    q, k, v = (leaf(s, torch.float64, g) for s in (q_shape, k_shape, v_shape))
    L, S = q_shape[-2], k_shape[-2]
    kwargs = {"causal": {"is_causal": True}, "dropout": {"dropout_p": 0.5}, "gqa": {"enable_gqa": True},
              "bool_mask": {"attn_mask": torch.rand(L, S, generator=g) > 0.5},
              "float_mask_grad": {"attn_mask": leaf((1, 3, L, S), torch.float64, g)}}[extra]
    mask = kwargs.pop("attn_mask", None)
    grad_out = torch.randn(*q_shape[:-1], v_shape[-1], generator=g, dtype=torch.float64)
    got = run_attention(ours, q, k, v, mask, grad_out, **kwargs)
    expected = run_attention(math_sdpa, q, k, v, mask, grad_out, **kwargs)
    for name, a, b in zip(RESULT_NAMES, got, expected):
        assert a.shape == b.shape, name
        assert (a == 0).all() and (b == 0).all(), name
