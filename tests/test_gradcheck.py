"""torch.autograd.gradcheck in float64: the backward kernels against finite
differences of the forward, for q, k, v and a float mask."""
import pytest
import torch

import torch_selfattn

ops = torch.ops.selfattn


def inputs(Hq=4, H=4, L=6, S=9, E=5, Ev=3, batch=(2,), seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*batch, Hq, L, E, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(*batch, H, S, E, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(*batch, H, S, Ev, generator=g, dtype=torch.float64, requires_grad=True)
    return q, k, v


@pytest.mark.slow
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("gqa", [False, True], ids=["mha", "gqa"])
@pytest.mark.parametrize("L,S", [(6, 9), (9, 6), (1, 5)])
def test_gradcheck_query_key_value(causal, gqa, L, S):
    q, k, v = inputs(H=2 if gqa else 4, L=L, S=S)

    def attention(q, k, v):
        return torch_selfattn.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)

    assert torch.autograd.gradcheck(attention, (q, k, v))


@pytest.mark.slow
@pytest.mark.parametrize("gqa", [False, True], ids=["mha", "gqa"])
@pytest.mark.parametrize("mask_shape", [(2, 4, 6, 9), (6, 9), (4, 1, 9), (2, 1, 6, 1), (1, 1)],
                         ids=lambda s: "x".join(map(str, s)))
def test_gradcheck_with_float_mask(gqa, mask_shape):
    q, k, v = inputs(H=2 if gqa else 4, seed=1)
    mask = torch.randn(mask_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    mask.requires_grad_()

    def attention(q, k, v, mask):
        return torch_selfattn.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa, scale=0.7)

    assert torch.autograd.gradcheck(attention, (q, k, v, mask))


def test_gradcheck_with_partly_masked_rows():
    # -inf entries (and one fully masked row) in a mask that requires grad.
    q, k, v = inputs(seed=3)
    mask = torch.randn(6, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    mask[1, ::2] = float("-inf")
    mask[4] = float("-inf")
    mask.requires_grad_()

    def attention(q, k, v, mask):
        return torch_selfattn.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    assert torch.autograd.gradcheck(attention, (q, k, v, mask))


def test_gradcheck_five_dims_and_strided_inputs():
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 3, 7, 2, 4, generator=g, dtype=torch.float64).transpose(-3, -2).requires_grad_()
    k = torch.randn(2, 1, 2, 6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 1, 2, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(torch_selfattn.scaled_dot_product_attention, (q, k, v))


def test_gradcheck_core_op():
    q, k, v = inputs(H=2)
    mask = torch.randn(2, 1, 6, 9, dtype=torch.float64, requires_grad=True)

    def core(q, k, v, mask):
        return ops.attention_forward(q, k, v, mask, 0.0, False, -0.4)[0]

    assert torch.autograd.gradcheck(core, (q, k, v, mask))
