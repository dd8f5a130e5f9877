"""Double backward: attention_backward has a derivative of its own.

torch.autograd.gradgradcheck in float64 checks it against finite differences
of the first-order gradients (the fused backward kernel) for every option the
kernels take. The second derivatives are also compared with those of
PyTorch's math SDPA in float64 on a gradient-penalty loss, on shapes large
enough that the recompute runs in several blocks of query rows.

gradgradcheck is slow (one backward per element of the Jacobian), so the
shapes are tiny and most cases use fast_mode, which checks the Jacobian
against random vectors instead of element by element.
"""
import pytest
import torch
from torch.autograd import gradgradcheck
from torch.nn.attention import SDPBackend, sdpa_kernel

import torch_selfattn
from helpers.reference import pytorch_sdpa

ours = torch_selfattn.scaled_dot_product_attention
INF = float("inf")


def randn(*shape, seed, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=requires_grad)


def qkv(B=2, Hq=2, H=2, L=5, S=7, E=4, Ev=3, seed=0):
    return randn(B, Hq, L, E, seed=seed), randn(B, H, S, E, seed=seed + 1), randn(B, H, S, Ev, seed=seed + 2)


def bool_mask_with_a_hidden_row(L=5, S=7):
    mask = torch.rand(L, S, generator=torch.Generator().manual_seed(9)) > 0.3
    mask[:, 0] = True
    mask[2] = False  # a row that sees no key: output 0, no NaN in any derivative
    return mask


def float_mask_with_hidden_entries():
    # Broadcast over the batch, per head; −inf entries and a row of them.
    mask = randn(2, 5, 7, seed=20, requires_grad=False)
    mask[0, 1, ::2] = -INF
    mask[1, 3] = -INF
    return mask.requires_grad_()


CASES = {
    "plain": {},
    "causal": {"is_causal": True},
    "bool_mask": {"attn_mask": bool_mask_with_a_hidden_row()},
    "scale": {"scale": -0.8},
    "gqa": {"enable_gqa": True},
    "window": {"window": (2, 1)},
    "window_causal_bottom_right": {"is_causal": True, "window": (1, -1), "causal_alignment": "bottom_right"},
    "alibi": {"alibi_slopes": torch.tensor([0.5, 0.25, 0.125, 1.0], dtype=torch.float64)},
    "softcap": {"softcap": 1.5, "scale": 1.0},
    # Slopes per batch and head.
    "alibi_softcap_window": {"alibi_slopes": torch.tensor([[0.3, 0.7, 0.2, 0.4], [0.9, 0.1, 0.5, 0.6]],
                                                          dtype=torch.float64),
                             "softcap": 2.0, "window": (-1, 2)},
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_gradgradcheck(case):
    kwargs = CASES[case]
    heads = 4 if "alibi_slopes" in kwargs else 2
    q, k, v = qkv(Hq=heads, H=heads // 2 if case == "gqa" else heads)

    def attention(q, k, v):
        return ours(q, k, v, **kwargs)

    # Exhaustive (element by element) for the plain case, random probes for the others.
    assert gradgradcheck(attention, (q, k, v), fast_mode=case != "plain")


@pytest.mark.slow
def test_gradgradcheck_float_mask():
    """A float mask that requires grad: its own second derivatives, and the
    cross terms with q, k and v; −inf entries and a fully hidden row."""
    q, k, v = qkv()
    mask = float_mask_with_hidden_entries()

    def attention(q, k, v, mask):
        return ours(q, k, v, attn_mask=mask)

    assert gradgradcheck(attention, (q, k, v, mask))


@pytest.mark.parametrize("L,S", [(7, 4), (3, 8)], ids=["L>S", "L<S"])
def test_gradgradcheck_bottom_right_causal(L, S):
    # With L > S the first L − S rows see no key.
    q, k, v = qkv(L=L, S=S, seed=3)

    def attention(q, k, v):
        return ours(q, k, v, is_causal=True, causal_alignment="bottom_right")

    assert gradgradcheck(attention, (q, k, v), fast_mode=True)


@pytest.mark.parametrize("case", ["plain", "causal_gqa", "float_mask"])
def test_gradgradcheck_dropout(case):
    """The seed is fixed inside, so that every call draws the same mask; the
    second derivative regenerates it from the forward's rng_state."""
    kwargs = {"is_causal": True, "enable_gqa": True} if case == "causal_gqa" else {}
    q, k, v = qkv(Hq=4, H=2 if case == "causal_gqa" else 4, seed=4)
    mask = randn(5, 7, seed=5) if case == "float_mask" else None

    def attention(q, k, v, *mask):
        torch.manual_seed(1234)
        return ours(q, k, v, *mask, dropout_p=0.4, **kwargs)

    inputs = (q, k, v) if mask is None else (q, k, v, mask)
    assert gradgradcheck(attention, inputs, fast_mode=True)


def packed_sequences(q_lens, k_lens, Hq, H, E=4, Ev=3, seed=6):
    """(total, heads, dim) tensors and int32 offsets for varlen_attention."""
    def offsets(lens):
        return torch.tensor([0] + lens, dtype=torch.int32).cumsum(0).to(torch.int32)

    q = randn(sum(q_lens), Hq, E, seed=seed)
    k = randn(sum(k_lens), H, E, seed=seed + 1)
    v = randn(sum(k_lens), H, Ev, seed=seed + 2)
    return q, k, v, offsets(q_lens), offsets(k_lens)


VARLEN_CASES = {
    "causal_window_alibi": {"is_causal": True, "window": (2, -1), "causal_alignment": "bottom_right",
                            "alibi_slopes": torch.tensor([0.5, 0.2, 0.9, 0.1], dtype=torch.float64)},
    "dropout_softcap": {"dropout_p": 0.3, "softcap": 1.0},
}


@pytest.mark.parametrize("case", VARLEN_CASES)
def test_gradgradcheck_varlen(case):
    # Three sequences, one of them with no keys (its row sees nothing), GQA.
    q_lens, k_lens = [3, 1, 4], [5, 0, 3]
    q, k, v, cu_q, cu_k = packed_sequences(q_lens, k_lens, Hq=4, H=2)
    kwargs = VARLEN_CASES[case]

    def attention(q, k, v):
        torch.manual_seed(99)
        return torch_selfattn.varlen_attention(q, k, v, cu_q, cu_k, max(q_lens), max(k_lens), **kwargs)

    assert gradgradcheck(attention, (q, k, v), fast_mode=True)


@pytest.mark.parametrize("kwargs", [{}, {"window": (1, -1), "softcap": 1.5,
                                          "alibi_slopes": torch.tensor([[0.5, 0.3], [0.2, 0.8]], dtype=torch.float64)}],
                         ids=["causal", "window_softcap_alibi"])
def test_gradgradcheck_kv_cache(kwargs):
    q = randn(2, 2, 2, 4, seed=7)
    key_cache, value_cache = randn(2, 1, 6, 4, seed=8), randn(2, 1, 6, 3, seed=9)
    cache_seqlens = torch.tensor([4, 6], dtype=torch.int32)

    def attention(q, key_cache, value_cache):
        return torch_selfattn.kv_cache_attention(q, key_cache, value_cache, cache_seqlens, **kwargs)

    assert gradgradcheck(attention, (q, key_cache, value_cache), fast_mode=True)


def gradient_penalty_gradients(fn, q, k, v, mask, grad_out, wrt):
    """The gradients at `wrt` of loss = <out, grad_out> + sum of ||g||² over
    the first-order gradients g of <out, grad_out> (q, k, v and the mask when
    it requires grad): a loss whose backward is the double backward."""
    out = fn(q, k, v, attn_mask=mask)
    leaves = [t for t in (q, k, v, mask) if t is not None and t.requires_grad]
    first = torch.autograd.grad(out, leaves, grad_out, create_graph=True)
    loss = (out * grad_out).sum() + sum(g.square().sum() for g in first)
    return torch.autograd.grad(loss, wrt)


def math_sdpa(*args, **kwargs):
    with sdpa_kernel([SDPBackend.MATH]):
        return pytorch_sdpa(*args, **kwargs)


def band_mask(L, S, left):
    """Bottom-right aligned causal band: query i sees key j when 0 <= i + S - L - j <= left."""
    d = torch.arange(L)[:, None] + (S - L) - torch.arange(S)[None, :]
    return (d >= 0) & (d <= left)


PENALTY_CASES = {
    # The float mask broadcasts over batches and rows, so its gradient sums over the blocks.
    "float_mask_gqa": dict(shape=(2, 4, 2, 600, 600), ours={"enable_gqa": True}, math={"enable_gqa": True}),
    # Blocks see only the keys of their rows' band.
    "causal_window": dict(shape=(1, 2, 2, 500, 700),
                          ours={"is_causal": True, "window": (150, -1), "causal_alignment": "bottom_right"},
                          math={"attn_mask": band_mask(500, 700, 150)}),
}


@pytest.mark.parametrize("case,dtype", [("float_mask_gqa", torch.float64), ("float_mask_gqa", torch.float32),
                                        ("causal_window", torch.float64)], ids=["float_mask_gqa-fp64",
                                                                                "float_mask_gqa-fp32", "causal_window"])
def test_gradient_penalty_matches_pytorch_math_in_several_blocks(case, dtype):
    """Against PyTorch's math SDPA, differentiated twice by autograd in
    float64, on shapes for which the recompute runs in several blocks of
    query rows."""
    B, Hq, H, L, S = PENALTY_CASES[case]["shape"]
    q, k, v = (t.detach().to(dtype).requires_grad_() for t in qkv(B, Hq, H, L, S, 16, 16, seed=10))
    mask = randn(1, Hq, 1, S, seed=13).to(dtype) if case == "float_mask_gqa" else None
    grad_out = randn(B, Hq, L, 16, seed=14, requires_grad=False).to(dtype)
    leaves = tuple(t for t in (q, k, v, mask) if t is not None)
    ours_kwargs, math_kwargs = PENALTY_CASES[case]["ours"], PENALTY_CASES[case]["math"]
    got = gradient_penalty_gradients(lambda *a, **kw: ours(*a, **kw, **ours_kwargs), q, k, v, mask, grad_out, leaves)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref_mask = ref_leaves[3] if mask is not None else math_kwargs.get("attn_mask")
    expected = gradient_penalty_gradients(
        lambda q, k, v, attn_mask: math_sdpa(q, k, v, attn_mask=attn_mask, enable_gqa=math_kwargs.get("enable_gqa", False)),
        *ref_leaves[:3], ref_mask, grad_out.double(), ref_leaves)
    tolerance = {torch.float64: 1e-9, torch.float32: 1e-3}[dtype]
    for name, a, b in zip(["query", "key", "value", "attn_mask"], got, expected):
        assert a.dtype == dtype, name
        torch.testing.assert_close(a.double(), b, rtol=tolerance, atol=tolerance * b.abs().max().item(), msg=name)


def test_third_derivative_matches_pytorch_math():
    """create_graph=True through the double backward: a derivative of the
    second derivative."""
    q, k, v = qkv(seed=15)
    mask = randn(5, 7, seed=16)
    grad_out = randn(2, 2, 5, 3, seed=17, requires_grad=False)

    def third(fn, q, k, v, mask):
        out = fn(q, k, v, attn_mask=mask)
        grad_q, = torch.autograd.grad(out, q, grad_out, create_graph=True)
        grad_k, = torch.autograd.grad(grad_q.square().sum(), k, create_graph=True)
        return torch.autograd.grad(grad_k.square().sum(), (q, k, v, mask))

    got = third(ours, q, k, v, mask)
    expected = third(math_sdpa, q, k, v, mask)
    for name, a, b in zip(["query", "key", "value", "attn_mask"], got, expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=name)


def test_fully_hidden_rows_have_zero_finite_second_derivatives():
    q, k, v = qkv(seed=18)
    mask = bool_mask_with_a_hidden_row()
    grad_out = randn(2, 2, 5, 3, seed=19, requires_grad=False)
    grads = gradient_penalty_gradients(ours, q, k, v, mask, grad_out, (q, k, v))
    expected = gradient_penalty_gradients(math_sdpa, q, k, v, mask, grad_out, (q, k, v))
    for a, b in zip(grads, expected):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert (grads[0][:, :, 2] == 0).all()  # the hidden row's query


def test_tracing_the_double_backward_raises_a_clear_error():
    """The recompute reads the dropout seed and the sequence offsets on the
    host, so fake tensors (torch.compile, export) cannot run it."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k, v = (torch.empty(2, 2, 5, 4, requires_grad=True) for _ in range(3))
        grad_q, = torch.autograd.grad(ours(q, k, v).sum(), q, create_graph=True)
        with pytest.raises(NotImplementedError, match=r"derivative \(double backward\) runs eagerly"):
            grad_q.sum().backward()
