"""torch.func with torch-selfattn (issue 21): grad, vjp, vmap, per-sample
gradients through vmap(grad), jvp and second derivatives, in float64 against
PyTorch's SDPA on the same inputs.

The core ops' autograd is C++ (csrc/api/autograd_nodes.cpp), graph nodes built
as PyTorch's own generated kernels build theirs, so the same kernel serves
LibTorch (no Python) and these transforms: there is no second, Python-only
path to cover. PyTorch's reference runs on its math backend, the one that has
forward-mode and second derivatives on the CPU."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, jacrev, jvp, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

import torch_selfattn
from helpers.feature_reference import explicit_attention

D = torch.float64
TOL = dict(atol=1e-10, rtol=1e-9)


def pytorch_sdpa(*args, **kwargs):
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(*args, **kwargs)


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def inputs(L=5, S=7, Hq=4, H=2, E=6, Ev=3, B=2):
    return randn(B, Hq, L, E, seed=1), randn(B, H, S, E, seed=2), randn(B, H, S, Ev, seed=3)


# The calls under test: masks of both kinds, causal, GQA, an explicit scale.
CASES = {
    "plain": dict(),
    "causal": dict(is_causal=True),
    "float_mask": dict(attn_mask=randn(5, 7, seed=4)),
    "bool_mask": dict(attn_mask=randn(4, 5, 7, seed=5) > -0.5),  # per head; vmap maps the batch away
    "scale": dict(scale=0.3),
}


def both(kwargs):
    ours = lambda q, k, v: torch_selfattn.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kwargs)
    theirs = lambda q, k, v: pytorch_sdpa(q, k, v, enable_gqa=True, **kwargs)
    return ours, theirs


def assert_all_close(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL)


def loss_of(attend):
    return lambda q, k, v: attend(q, k, v).sin().sum()


@pytest.mark.parametrize("case", CASES)
def test_grad(case):
    ours, theirs = both(CASES[case])
    q, k, v = inputs()
    assert_all_close(grad(loss_of(ours), argnums=(0, 1, 2))(q, k, v),
                     grad(loss_of(theirs), argnums=(0, 1, 2))(q, k, v))


@pytest.mark.parametrize("case", CASES)
def test_vjp(case):
    ours, theirs = both(CASES[case])
    q, k, v = inputs()
    cotangent = randn(2, 4, 5, 3, seed=9)
    out, pullback = vjp(ours, q, k, v)
    want_out, want_pullback = vjp(theirs, q, k, v)
    torch.testing.assert_close(out, want_out, **TOL)
    assert_all_close(pullback(cotangent), want_pullback(cotangent))


@pytest.mark.parametrize("case", CASES)
def test_vmap(case):
    ours, theirs = both(CASES[case])
    q, k, v = inputs()
    # Mapped over the batch (dim 0), then over a dim in the middle of key and value.
    torch.testing.assert_close(vmap(ours)(q, k, v), theirs(q, k, v), **TOL)
    got = vmap(ours, in_dims=(None, 2, 2), out_dims=2)(q, k.unsqueeze(2).expand(-1, -1, 3, -1, -1),
                                                       v.unsqueeze(2).expand(-1, -1, 3, -1, -1))
    torch.testing.assert_close(got, theirs(q, k, v).unsqueeze(2).expand(-1, -1, 3, -1, -1), **TOL)


@pytest.mark.parametrize("case", CASES)
def test_vmap_of_grad(case):
    ours, theirs = both(CASES[case])
    q, k, v = inputs()
    got = vmap(grad(loss_of(ours), argnums=(0, 1, 2)))(q, k, v)
    want = vmap(grad(loss_of(theirs), argnums=(0, 1, 2)))(q, k, v)
    assert_all_close(got, want)


class Block(nn.Module):
    """Self-attention over a (tokens, dim) sequence, as the per-sample
    gradient recipe writes it (one sample, no batch dim)."""

    def __init__(self, attend, dim=8, heads=2):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim, dtype=D)
        self.heads = heads
        self.attend = attend

    def forward(self, x):
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(0, 1) for t in self.qkv(x).chunk(3, -1))
        return self.attend(q, k, v, is_causal=True).transpose(0, 1).flatten(-2)


def test_per_sample_gradients_of_a_model():
    torch.manual_seed(0)
    ours = Block(torch_selfattn.scaled_dot_product_attention)
    theirs = Block(pytorch_sdpa)
    theirs.load_state_dict(ours.state_dict())
    x, target = randn(6, 9, 8, seed=10), randn(6, 9, 8, seed=11)

    def per_sample(model):
        params = {n: p.detach() for n, p in model.named_parameters()}

        def loss(params, x, target):
            return (functional_call(model, params, (x,)) - target).square().mean()

        return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, target)

    got, want = per_sample(ours), per_sample(theirs)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].shape[0] == 6
        torch.testing.assert_close(got[name], want[name], **TOL, msg=name)
    # Their mean is the batch gradient of the mean loss.
    ours.zero_grad()
    (torch.stack([(ours(xi) - ti).square().mean() for xi, ti in zip(x, target)]).mean()).backward()
    for name, p in ours.named_parameters():
        torch.testing.assert_close(got[name].mean(0), p.grad, **TOL, msg=name)


@pytest.mark.parametrize("case", CASES)
def test_jvp(case):
    ours, theirs = both(CASES[case])
    primals = inputs()
    tangents = tuple(randn(*t.shape, seed=20 + i) for i, t in enumerate(primals))
    out, tangent = jvp(ours, primals, tangents)
    want_out, want_tangent = jvp(theirs, primals, tangents)
    torch.testing.assert_close(out, want_out, **TOL)
    torch.testing.assert_close(tangent, want_tangent, **TOL)


def test_jvp_of_the_mask_and_through_forward_ad():
    q, k, v = inputs()
    mask, mask_tangent = randn(2, 1, 5, 7, seed=30), randn(2, 1, 5, 7, seed=31)
    got = jvp(lambda m: torch_selfattn.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True),
              (mask,), (mask_tangent,))[1]
    want = jvp(lambda m: pytorch_sdpa(q, k, v, attn_mask=m, enable_gqa=True), (mask,), (mask_tangent,))[1]
    torch.testing.assert_close(got, want, **TOL)

    import torch.autograd.forward_ad as fwAD
    q_tangent = randn(*q.shape, seed=32)
    want = jvp(lambda q: pytorch_sdpa(q, k, v, enable_gqa=True), (q,), (q_tangent,))[1]
    with fwAD.dual_level():
        out = torch_selfattn.scaled_dot_product_attention(fwAD.make_dual(q, q_tangent), k, v, enable_gqa=True)
        torch.testing.assert_close(fwAD.unpack_dual(out).tangent, want, **TOL)


@pytest.mark.parametrize("options", [
    dict(window=(2, 1)),
    dict(is_causal=True, causal_alignment="bottom_right", window=(3, -1)),
    dict(alibi_slopes=torch.tensor([0.5, 0.25, 0.125, 0.0625], dtype=D)),
    dict(softcap=2.0, is_causal=True),
], ids=["window", "bottom_right", "alibi", "softcap"])
def test_jvp_of_our_extras(options):
    q, k, v = inputs(L=6, S=6)
    tangents = tuple(randn(*t.shape, seed=40 + i) for i, t in enumerate((q, k, v)))
    got = jvp(lambda *a: torch_selfattn.scaled_dot_product_attention(*a, enable_gqa=True, **options),
              (q, k, v), tangents)[1]
    want = jvp(lambda *a: explicit_attention(*a, enable_gqa=True, **options), (q, k, v), tangents)[1]
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("case", ["plain", "causal", "float_mask"])
def test_second_derivatives(case):
    ours, theirs = both(CASES[case])
    q, k, v = inputs()

    def hessian_vector(attend):
        inner = lambda q: grad(loss_of(attend))(q, k, v)
        return grad(lambda q: (inner(q) * randn(*q.shape, seed=50)).sum())(q)

    torch.testing.assert_close(hessian_vector(ours), hessian_vector(theirs), **TOL)


def test_vmap_over_second_derivatives_raises_not_implemented():
    # The derivative of the backward refuses gradients that vmap batches
    # rather than give wrong numbers (documented in docs/pytorch_parity.md).
    q, k, v = inputs()
    with pytest.raises(NotImplementedError, match="does not run under vmap"):
        jacrev(jacrev(lambda q: loss_of(both({})[0])(q, k, v)))(q[:1, :2, :2])


def test_unsupported_forward_mode_raises_not_implemented():
    q, k, v = inputs()
    with pytest.raises(NotImplementedError, match="forward-mode AD .* dropout_p > 0"):
        jvp(lambda q: torch_selfattn.scaled_dot_product_attention(q, k, v, dropout_p=0.5, enable_gqa=True), (q,), (q,))
    packed = torch.randn(9, 2, 4, dtype=D)
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    with pytest.raises(NotImplementedError, match="forward-mode AD .* packed sequences"):
        jvp(lambda x: torch_selfattn.varlen_attention(x, x, x, cu, cu, 5, 5), (packed,), (packed,))
    # Forward-over-reverse (jacfwd of a gradient) would need the backward's own jvp.
    with pytest.raises(NotImplementedError, match="attention_backward: forward-mode AD"):
        torch.func.jacfwd(grad(loss_of(both({})[0])))(q, k, v)


def test_hessian_vector_product_with_create_graph_counts_each_path_once():
    # grad_output = cos(out) depends on q: the second derivative must take
    # that path once (torch.func.grad always differentiates with create_graph).
    q, k, v = inputs()
    w = randn(*q.shape, seed=60)

    def hessian_vector(attend):
        x = q.clone().requires_grad_()
        (g,) = torch.autograd.grad(loss_of(attend)(x, k, v), x, create_graph=True)
        (h,) = torch.autograd.grad((g * w).sum(), x, create_graph=True)
        return h

    torch.testing.assert_close(hessian_vector(both({})[0]), hessian_vector(both({})[1]), **TOL)
