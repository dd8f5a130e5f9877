"""Forward and backward against the float64 reference (tests/helpers/reference.py),
across dtypes, ranks, lengths, head dims, masks, causal masking, GQA, scales
and memory layouts. Each case draws fresh random inputs from its own seed."""
import itertools
import random

import pytest
import torch

from helpers.reference import check_against_reference, ours, poisoned_outputs

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
DTYPE_IDS = ["fp32", "fp64", "bf16", "fp16"]
LENGTHS = [1, 7, 64, 129, 257, 1000]


def randn(shape, dtype, g, requires_grad=True, layout="contiguous"):
    """A random tensor of the given shape and dtype, laid out as asked:
    "contiguous"; "transposed", the (..., L, H, E) -> (..., H, L, E) view that
    models pass; or "sliced", a view with a storage offset and row padding."""
    shape = tuple(shape)
    if layout == "transposed" and len(shape) >= 3:
        base = torch.randn(*shape[:-3], shape[-2], shape[-3], shape[-1], generator=g, dtype=torch.float64)
        t = base.to(dtype).transpose(-3, -2)
    elif layout == "sliced":
        base = torch.randn(*shape[:-1], shape[-1] + 3, generator=g, dtype=torch.float64)
        t = base.to(dtype)[..., 2 : 2 + shape[-1]]
    else:
        t = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    assert t.shape == shape
    return t.detach().requires_grad_(requires_grad) if requires_grad else t


def qkv(dtype, batch=(2,), Hq=2, H=None, L=33, S=47, E=16, Ev=None, seed=0, layout="contiguous"):
    g = torch.Generator().manual_seed(seed)
    H = Hq if H is None else H
    Ev = E if Ev is None else Ev
    q = randn((*batch, Hq, L, E), dtype, g, layout=layout)
    k = randn((*batch, H, S, E), dtype, g, layout=layout)
    v = randn((*batch, H, S, Ev), dtype, g, layout=layout)
    return q, k, v


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("L,S", list(itertools.product(LENGTHS, LENGTHS)))
def test_lengths(dtype, L, S):
    q, k, v = qkv(dtype, batch=(1,), L=L, S=S, E=32, seed=L * 7919 + S)
    check_against_reference(q, k, v)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("L,S", [(1, 1), (7, 257), (129, 64), (257, 257), (1000, 129), (64, 1000)])
def test_causal(dtype, L, S):
    # Top-left aligned: with L > S the rows past S see every key; with L < S
    # the last keys are seen by no row.
    q, k, v = qkv(dtype, batch=(1,), L=L, S=S, E=32, seed=L + S)
    check_against_reference(q, k, v, is_causal=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("E", [8, 32, 64, 80, 128, 256])
@pytest.mark.parametrize("value_dim", ["same", "other"])
def test_head_dims(dtype, E, value_dim):
    Ev = E if value_dim == "same" else {8: 24, 32: 16, 64: 40, 80: 128, 128: 64, 256: 96}[E]
    q, k, v = qkv(dtype, L=129, S=70, E=E, Ev=Ev, seed=E)
    check_against_reference(q, k, v)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "q_shape,k_shape,v_shape",
    [
        ((37, 16), (45, 16), (45, 8)),  # 2-D: one head
        ((3, 37, 16), (3, 45, 16), (3, 45, 8)),  # 3-D: (heads, L, E)
        ((3, 37, 16), (1, 45, 16), (3, 45, 8)),  # 3-D, key broadcast
        ((2, 3, 37, 16), (2, 3, 45, 16), (2, 3, 45, 8)),
        ((2, 2, 3, 37, 16), (2, 2, 3, 45, 16), (2, 2, 3, 45, 8)),  # 5-D
        ((2, 2, 3, 37, 16), (1, 2, 3, 45, 16), (2, 1, 3, 45, 8)),  # 5-D, batch dims broadcast
        ((2, 3, 37, 16), (45, 16), (3, 45, 8)),  # ranks differ
    ],
    ids=["2d", "3d", "3d_bcast", "4d", "5d", "5d_bcast", "mixed_ranks"],
)
def test_ranks(dtype, q_shape, k_shape, v_shape):
    g = torch.Generator().manual_seed(len(q_shape))
    q, k, v = (randn(s, dtype, g) for s in (q_shape, k_shape, v_shape))
    check_against_reference(q, k, v)


def mask_shapes():
    """Every shape that broadcasts to scores (B=2, Hq=3, L=37, S=45): each of
    the four dims 1 or full, plus masks with fewer dims."""
    full = (2, 3, 37, 45)
    shapes = [tuple(f if keep else 1 for f, keep in zip(full, keeps)) for keeps in itertools.product([0, 1], repeat=4)]
    return shapes + [(37, 45), (1, 45), (37, 1), (3, 37, 45), (3, 1, 45)]


MASK_KINDS = ["bool", "float32", "query_dtype", "float32_grad", "query_dtype_grad"]


def make_mask(kind, shape, dtype, g):
    if kind == "bool":
        mask = torch.rand(shape, generator=g) > 0.3
        mask[..., 0] = True  # most rows keep a key; fully masked rows have their own test
        return mask
    mask_dtype = torch.float32 if kind.startswith("float32") else dtype
    mask = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(mask_dtype)
    return mask.requires_grad_(kind.endswith("_grad"))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("shape", mask_shapes(), ids=lambda s: "x".join(map(str, s)))
def test_masks(dtype, kind, shape):
    g = torch.Generator().manual_seed(sum(shape))
    q, k, v = qkv(dtype, batch=(2,), Hq=3, L=37, S=45, E=16, Ev=24, seed=len(shape))
    check_against_reference(q, k, v, attn_mask=make_mask(kind, shape, dtype, g))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("Hq,H_key,H_value", [(8, 2, 2), (6, 1, 1), (4, 4, 4), (8, 4, 2)])
@pytest.mark.parametrize("causal", [False, True])
def test_grouped_query_attention(dtype, Hq, H_key, H_value, causal):
    g = torch.Generator().manual_seed(Hq + H_key)
    q = randn((2, Hq, 70, 32), dtype, g)
    k = randn((2, H_key, 150, 32), dtype, g)
    v = randn((2, H_value, 150, 24), dtype, g)
    check_against_reference(q, k, v, is_causal=causal, enable_gqa=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("scale", [0.01, 0.5, 2.0, -0.7])
def test_custom_scale(dtype, scale):
    q, k, v = qkv(dtype, L=65, S=140, E=40, seed=3)
    check_against_reference(q, k, v, scale=scale)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", ["transposed", "sliced"])
@pytest.mark.parametrize("causal", [False, True])
def test_non_contiguous(dtype, layout, causal):
    q, k, v = qkv(dtype, batch=(2,), Hq=4, L=90, S=130, E=32, Ev=16, seed=5, layout=layout)
    assert not q.is_contiguous() and not k.is_contiguous() and not v.is_contiguous()
    check_against_reference(q, k, v, is_causal=causal)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_expanded_key_value(dtype):
    # Stride-0 batch and head dims, as from expand(): read in place.
    g = torch.Generator().manual_seed(11)
    q = randn((3, 4, 50, 16), dtype, g)
    k_base, v_base = randn((1, 1, 80, 16), dtype, g), randn((1, 1, 80, 16), dtype, g)
    k, v = k_base.expand(3, 4, 80, 16), v_base.expand(3, 4, 80, 16)
    out = check_against_reference(q, k, v)
    assert out[0].shape == (3, 4, 50, 16)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_fully_masked_rows_give_zero_output_and_gradients(dtype, mask_kind):
    g = torch.Generator().manual_seed(13)
    q, k, v = qkv(dtype, batch=(2,), Hq=2, L=20, S=30, seed=13)
    keep = torch.rand(2, 1, 20, 30, generator=g) > 0.5
    keep[:, :, [3, 11]] = False  # rows 3 and 11 see no key at all
    mask = keep if mask_kind == "bool" else torch.zeros(keep.shape, dtype=dtype).masked_fill(~keep, float("-inf"))
    out, dq, dk, dv = check_against_reference(q, k, v, attn_mask=mask)
    assert (out[:, :, [3, 11]] == 0).all()
    assert (dq[:, :, [3, 11]] == 0).all()


def random_case(rng):
    """One draw over every feature at once: dtype, rank, lengths, head dims,
    GQA, mask kind and shape, causal, scale and layout."""
    dtype = rng.choice(DTYPES)
    batch = tuple(rng.choice([1, 2, 3]) for _ in range(rng.choice([0, 1, 2])))
    gqa = rng.random() < 0.3
    H = rng.choice([1, 2, 3])
    Hq = H * rng.choice([1, 2, 4]) if gqa else H
    L, S = rng.choice(LENGTHS[:5] + [33, 100]), rng.choice(LENGTHS[:5] + [33, 100])
    E, Ev = rng.choice([8, 16, 32, 64, 80, 128]), rng.choice([8, 16, 32, 64, 80, 128])
    layout = rng.choice(["contiguous", "transposed", "sliced"])
    causal = rng.random() < 0.3
    mask_kind = None if causal or rng.random() < 0.3 else rng.choice(MASK_KINDS)
    scale = rng.choice([None, None, 0.3, -1.5])
    return dict(dtype=dtype, batch=batch, Hq=Hq, H=H, L=L, S=S, E=E, Ev=Ev, layout=layout, causal=causal,
                mask_kind=mask_kind, scale=scale, gqa=gqa)


@pytest.mark.parametrize("draw", range(60))
def test_random_feature_combinations(draw):
    rng = random.Random(draw)
    c = random_case(rng)
    q, k, v = qkv(c["dtype"], batch=c["batch"], Hq=c["Hq"], H=c["H"], L=c["L"], S=c["S"], E=c["E"], Ev=c["Ev"],
                  seed=draw, layout=c["layout"])
    mask = None
    if c["mask_kind"] is not None:
        full = (*c["batch"], c["Hq"], c["L"], c["S"])
        shape = tuple(d if rng.random() < 0.5 else 1 for d in full)[rng.randrange(len(full) - 1):]
        mask = make_mask(c["mask_kind"], shape, c["dtype"], torch.Generator().manual_seed(draw))
    check_against_reference(q, k, v, attn_mask=mask, is_causal=c["causal"], scale=c["scale"], enable_gqa=c["gqa"])


def test_poisoning_is_on_inside_the_checks():
    """The poison the reference checks rely on: inside poisoned_outputs every
    aten::empty, the op through which our C++ allocates its outputs too,
    returns NaN."""
    with poisoned_outputs():
        assert torch.empty(4).isnan().all()
        assert torch.ops.aten.empty.memory_format([3, 5]).isnan().all()
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize(
    "q_shape,k_shape,v_shape",
    [
        ((0, 3, 5, 8), (0, 3, 6, 8), (0, 3, 6, 4)),  # no batch
        ((2, 3, 0, 8), (2, 3, 6, 8), (2, 3, 6, 4)),  # L = 0
        ((2, 3, 5, 8), (2, 3, 0, 8), (2, 3, 0, 4)),  # S = 0: zeros, like fully masked rows
        ((2, 3, 5, 8), (2, 3, 6, 8), (2, 3, 6, 0)),  # Ev = 0
        ((2, 3, 5, 0), (2, 3, 6, 0), (2, 3, 6, 4)),  # E = 0: uniform attention
        ((1, 0, 5, 8), (2, 1, 6, 8), (2, 1, 6, 4)),  # no heads after broadcasting
        ((3, 5, 8), (0, 3, 6, 8), (0, 3, 6, 4)),  # an empty batch from key
        ((5, 8), (0, 8), (0, 4)),
    ],
    ids=["batch0", "L0", "S0", "Ev0", "E0", "heads0", "key_batch0", "2d_S0"],
)
def test_empty_inputs_match_pytorch_math(q_shape, k_shape, v_shape):
    """Shapes and values as PyTorch's math path, the reference semantics (a
    pair of broadcasting matmuls). PyTorch's top-level function returns
    query-shaped zeros for some of these instead (an empty key batch), not
    broadcasting."""
    g = torch.Generator().manual_seed(17)
    q, k, v = (randn(s, torch.float64, g) for s in (q_shape, k_shape, v_shape))
    results = []
    for fn in (ours, lambda q, k, v: torch.ops.aten._scaled_dot_product_attention_math(q, k, v)[0]):
        out = fn(q, k, v)
        grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
        results.append([out, *grads])
    for got, expected in zip(*results):
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_uniform_attention_gives_zero_query_gradient(dtype):
    # Identical keys: every row attends uniformly and the exact dQ is 0, so
    # dQ shows the rounding of rowsum(dS) and nothing else.
    g = torch.Generator().manual_seed(19)
    q = randn((4, 1, 128, 55), dtype, g)
    k = randn((1, 1, 1, 55), dtype, g).expand(4, 1, 130, 55)
    v = randn((4, 1, 130, 55), dtype, g)
    check_against_reference(q, k, v, scale=2.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("L", [1, 70])
def test_causal_with_large_scores(dtype, L):
    # Scores around 1e3: the backward must recompute them exactly as the
    # forward did, or exp(S - lse) drifts from the forward's probabilities
    # (row 0 sees key 0 alone, with probability exactly 1).
    g = torch.Generator().manual_seed(23)
    q = (torch.randn(1, 2, L, 64, generator=g, dtype=torch.float64) * 30).to(dtype).requires_grad_()
    k = (torch.randn(1, 2, 67, 64, generator=g, dtype=torch.float64) * 30).to(dtype).requires_grad_()
    v = randn((1, 2, 67, 64), dtype, g)
    check_against_reference(q, k, v, is_causal=True)
