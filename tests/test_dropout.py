"""Dropout: drawn from PyTorch's default generator, applied to the attention
probabilities with the 1/(1-p) scaling, and regenerated (not stored) by the
backward. The tests that take the `device` fixture run on CUDA too; the
CUDA-only ones are in tests/test_cuda_runtime.py.

The mask itself is read back through the op (reference.dropout_multipliers):
with zero queries and value = identity the output row i is Z[i, :] / S."""
import pytest
import torch
import torch.nn.functional as F

import torch_selfattn
from helpers.reference import check_dropout_against_reference, dropout_multipliers, ours, pytorch_sdpa


def qk(B=2, Hq=4, H=4, L=48, S=64, E=16, dtype=torch.float64, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, L, E, generator=g, dtype=torch.float64).to(device, dtype)
    k = torch.randn(B, H, S, E, generator=g, dtype=torch.float64).to(device, dtype)
    return q, k


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_kept_fraction_and_scaling(p):
    q, k = qk(L=128, S=128, seed=1)
    z = dropout_multipliers(q, k, p, seed=3)
    kept = z != 0
    n = z.numel()
    fraction = kept.double().mean().item()
    # 6 standard deviations of a binomial fraction: fails by chance < 1e-8.
    assert abs(fraction - (1 - p)) < 6 * ((p * (1 - p) / n) ** 0.5), fraction
    torch.testing.assert_close(z[kept], torch.full_like(z[kept], 1 / (1 - p)), rtol=1e-12, atol=0)


def test_mask_varies_over_every_index(device):
    # No two heads, batches or rows share a mask pattern.
    q, k = qk(seed=2, device=device)
    kept = dropout_multipliers(q, k, 0.5, seed=4) != 0
    rows = kept.reshape(-1, kept.shape[-1])
    assert torch.unique(rows, dim=0).shape[0] == rows.shape[0]


def test_p_zero_and_one():
    q, k = qk(seed=3)
    v = torch.randn(2, 4, 64, 8, dtype=torch.float64)
    torch.testing.assert_close(ours(q, k, v, dropout_p=0.0), pytorch_sdpa(q, k, v), rtol=1e-12, atol=1e-12)
    assert (ours(q, k, v, dropout_p=1.0) == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", ["plain", "causal", "gqa", "float_mask"])
def test_output_and_gradients_match_reference_with_the_same_mask(device, dtype, case):
    """With the multipliers Z read back, the reference is the float64 math
    (softmax(QKᵀ·scale + mask) ∘ Z)·V, differentiated by autograd; PyTorch's
    error in the dtype is measured on the same formula."""
    kwargs = {"causal": {"is_causal": True}, "gqa": {"enable_gqa": True}}.get(case, {})
    q, k = qk(Hq=4, H=2 if case == "gqa" else 4, dtype=dtype, seed=5, device=device)
    g = torch.Generator().manual_seed(6)
    v = torch.randn(*k.shape[:-1], 24, generator=g, dtype=torch.float64).to(device, dtype)
    mask = torch.randn(48, 64, generator=g, dtype=torch.float64).to(device, dtype) if case == "float_mask" else None
    leaves = [None if t is None else t.detach().requires_grad_() for t in (q, k, v, mask)]
    # The pattern is a function of the seed and the element index only.
    check_dropout_against_reference(*leaves, dropout_p=0.3, seed=7, **kwargs)


def test_same_seed_same_output_and_gradients():
    q, k = (t.requires_grad_() for t in qk(dtype=torch.float32, seed=8))
    v = torch.randn(2, 4, 64, 16, requires_grad=True)
    runs = []
    for seed in (11, 11, 12):
        torch.manual_seed(seed)
        out = ours(q, k, v, dropout_p=0.4)
        runs.append([out, *torch.autograd.grad(out.square().sum(), (q, k, v))])
    for a, b in zip(runs[0], runs[1]):
        assert torch.equal(a, b)
    assert not torch.equal(runs[0][0], runs[2][0])


def test_each_call_draws_a_new_mask():
    q, k = qk(dtype=torch.float32, seed=9)
    v = torch.randn(2, 4, 64, 16)
    torch.manual_seed(0)
    first, second = ours(q, k, v, dropout_p=0.5), ours(q, k, v, dropout_p=0.5)
    assert not torch.equal(first, second)


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", [{}, {"is_causal": True}, {"enable_gqa": True}], ids=["plain", "causal", "gqa"])
def test_gradcheck_with_the_seed_fixed_inside(kwargs):
    """The backward regenerates the forward's mask: with the seed fixed inside
    the function, finite differences of the forward agree with it."""
    g = torch.Generator().manual_seed(10)
    q = torch.randn(2, 4, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    H = 2 if kwargs.get("enable_gqa") else 4
    k = torch.randn(2, H, 9, 5, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, H, 9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.randn(6, 9, generator=g, dtype=torch.float64, requires_grad=True)

    def attention(q, k, v, mask):
        torch.manual_seed(1234)
        extra = {} if kwargs.get("is_causal") else {"attn_mask": mask}
        return ours(q, k, v, dropout_p=0.4, **extra, **kwargs)

    inputs = (q, k, v, mask) if not kwargs.get("is_causal") else (q, k, v, mask.detach())
    assert torch.autograd.gradcheck(attention, inputs)


def test_patched_pytorch_dropout_call_is_ours():
    # F.dropout-style reproducibility through the patch: torch.manual_seed
    # fixes the result of F.scaled_dot_product_attention under patch_sdpa.
    q, k = qk(dtype=torch.float32, seed=12)
    v = torch.randn(2, 4, 64, 16)
    with torch_selfattn.patch_sdpa():
        torch.manual_seed(3)
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=0.2)
        torch.manual_seed(3)
        b = F.scaled_dot_product_attention(q, k, v, dropout_p=0.2)
    torch.manual_seed(3)
    assert torch.equal(a, b) and torch.equal(a, ours(q, k, v, dropout_p=0.2))
