"""patch_sdpa / unpatch_sdpa: routing torch.nn.functional.scaled_dot_product_attention
to torch-selfattn, restoring it, and falling back to PyTorch for inputs our
kernels do not take."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torch_selfattn
import torch_selfattn.patching as patching
from helpers.models import CausalSelfAttention
from helpers.patching import ORIGINAL, ops_called, restore_sdpa  # noqa: F401 (an autouse fixture)


def hits_ours(names):
    return "selfattn::attention_forward" in names


def inputs(B=2, H=3, L=17, S=17, E=8, dtype=torch.float32, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, E, generator=g, dtype=dtype, requires_grad=requires_grad) for n in (L, S, S)]


def test_original_is_pytorchs_before_any_patch():
    assert F.scaled_dot_product_attention is ORIGINAL
    assert patching._pytorch_sdpa is ORIGINAL


def test_context_manager_routes_to_our_op_and_restores():
    q, k, v = inputs()
    with torch_selfattn.patch_sdpa():
        assert F.scaled_dot_product_attention is not ORIGINAL
        out, names = ops_called(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert hits_ours(names), sorted(names)
    assert not any(n.startswith("aten::_scaled_dot_product") for n in names), sorted(names)
    assert F.scaled_dot_product_attention is ORIGINAL
    # The same as calling torch_selfattn directly, bit for bit.
    assert torch.equal(out, torch_selfattn.scaled_dot_product_attention(q, k, v, is_causal=True))
    # And after the block, PyTorch's own kernels again.
    _, names = ops_called(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert not hits_ours(names), sorted(names)


def test_patched_call_passes_every_argument():
    q, k, v = inputs(H=4)
    k, v = k[:, :2], v[:, :2]
    mask = torch.randn(1, 1, 17, 17)
    with torch_selfattn.patch_sdpa():
        torch.manual_seed(7)
        got = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.3, scale=0.7, enable_gqa=True)
        torch.manual_seed(7)
        positional = F.scaled_dot_product_attention(q, k, v, mask, 0.3, False, 0.7, True)
    torch.manual_seed(7)
    want = torch_selfattn.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.3, scale=0.7,
                                                       enable_gqa=True)
    assert torch.equal(got, want)
    assert torch.equal(positional, want)
    # Without dropout, the keyword arguments match PyTorch's own results.
    with torch_selfattn.patch_sdpa():
        got = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.7, enable_gqa=True)
    want = ORIGINAL(q, k, v, attn_mask=mask, scale=0.7, enable_gqa=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_context_manager_restores_when_the_block_raises():
    with pytest.raises(ZeroDivisionError):
        with torch_selfattn.patch_sdpa():
            assert F.scaled_dot_product_attention is not ORIGINAL
            1 / 0
    assert F.scaled_dot_product_attention is ORIGINAL


def test_context_manager_does_not_swallow_our_errors():
    q, k, v = inputs()
    with pytest.raises(RuntimeError, match="scaled_dot_product_attention: attn_mask and is_causal=True"):
        with torch_selfattn.patch_sdpa():
            F.scaled_dot_product_attention(q, k, v, attn_mask=torch.zeros(17, 17), is_causal=True)
    assert F.scaled_dot_product_attention is ORIGINAL


def test_plain_call_patches_until_unpatch():
    q, k, v = inputs()
    handle = torch_selfattn.patch_sdpa()
    try:
        assert F.scaled_dot_product_attention is not ORIGINAL
        for _ in range(2):  # stays patched across calls
            _, names = ops_called(lambda: F.scaled_dot_product_attention(q, k, v))
            assert hits_ours(names), sorted(names)
        # Seen through the module too, as a script that did "import torch.nn.functional as F" late would.
        assert torch.nn.functional.scaled_dot_product_attention is F.scaled_dot_product_attention
    finally:
        torch_selfattn.unpatch_sdpa()
    assert handle is not None
    assert F.scaled_dot_product_attention is ORIGINAL
    _, names = ops_called(lambda: F.scaled_dot_product_attention(q, k, v))
    assert not hits_ours(names), sorted(names)


def test_patch_twice_and_unpatch_once_restores_the_original():
    torch_selfattn.patch_sdpa()
    torch_selfattn.patch_sdpa()
    torch_selfattn.unpatch_sdpa()
    assert F.scaled_dot_product_attention is ORIGINAL
    torch_selfattn.unpatch_sdpa()  # unpatching an unpatched function changes nothing
    assert F.scaled_dot_product_attention is ORIGINAL


def test_patch_reaches_pytorch_modules_that_call_sdpa():
    # nn.MultiheadAttention (training mode, need_weights=False) calls the
    # module-level scaled_dot_product_attention of torch.nn.functional.
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).train()
    x = torch.randn(2, 9, 16)
    want, _ = mha(x, x, x, need_weights=False, is_causal=True, attn_mask=nn.Transformer.generate_square_subsequent_mask(9))
    with torch_selfattn.patch_sdpa():
        (got, _), names = ops_called(
            lambda: mha(x, x, x, need_weights=False, is_causal=True,
                        attn_mask=nn.Transformer.generate_square_subsequent_mask(9)))
    assert hits_ours(names), sorted(names)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------
# Fallback to PyTorch.

def test_fallback_when_no_kernel_for_the_device(monkeypatch):
    monkeypatch.setattr(patching, "_has_kernel", lambda device_type: False)
    q, k, v = inputs()
    with torch_selfattn.patch_sdpa():
        got, names = ops_called(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert not hits_ours(names), sorted(names)
    assert "aten::scaled_dot_product_attention" in names, sorted(names)
    assert torch.equal(got, ORIGINAL(q, k, v, is_causal=True))


def test_has_kernel_reports_cpu_and_not_meta():
    assert patching._has_kernel("cpu")
    assert not patching._has_kernel("meta")
    assert not patching._has_kernel("xla")


def test_fallback_for_meta_tensors():
    q, k, v = (t.to("meta") for t in inputs())
    with torch_selfattn.patch_sdpa():
        out, names = ops_called(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert not hits_ours(names), sorted(names)
    assert out.device.type == "meta" and out.shape == (2, 3, 17, 8)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("layout", [torch.strided, torch.jagged])
def test_fallback_for_nested_tensors(layout):
    # PyTorch computes attention over nested tensors; torch_selfattn does not
    # take them, so the patched function must hand them to PyTorch.
    g = torch.Generator().manual_seed(0)
    pieces = [torch.randn(2, n, 8, generator=g) for n in (3, 6)]  # (heads, length, dim)

    def make():
        if layout == torch.jagged:  # ragged dim next to the batch, as the jagged layout wants it
            return torch.nested.nested_tensor([p.transpose(0, 1) for p in pieces], layout=layout).transpose(1, 2)
        return torch.nested.nested_tensor([p.clone() for p in pieces], layout=layout)

    want = ORIGINAL(make(), make(), make())
    with torch_selfattn.patch_sdpa():
        got, names = ops_called(lambda: F.scaled_dot_product_attention(make(), make(), make()))
    assert not hits_ours(names), sorted(names)
    assert got.is_nested
    for a, b in zip(got.unbind(), want.unbind()):
        assert torch.equal(a, b)
    # The dense equivalent of each sequence agrees with our kernels.
    for x, a in zip(pieces, got.unbind()):
        torch.testing.assert_close(a, torch_selfattn.scaled_dot_product_attention(x, x, x), atol=1e-5, rtol=1e-5)


def test_fallback_for_integer_tensors_gives_pytorchs_own_error():
    x = torch.ones(2, 3, 4, dtype=torch.int64)
    with pytest.raises(RuntimeError) as theirs:
        ORIGINAL(x, x, x)
    with torch_selfattn.patch_sdpa():
        with pytest.raises(RuntimeError) as patched:
            F.scaled_dot_product_attention(x, x, x)
    assert str(patched.value) == str(theirs.value)
    assert "torch_selfattn" not in str(patched.value) and "float16, bfloat16" not in str(patched.value)


def test_supported_dtypes_go_to_our_op():
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        q, k, v = inputs(dtype=dtype)
        with torch_selfattn.patch_sdpa():
            out, names = ops_called(lambda: F.scaled_dot_product_attention(q, k, v))
        assert hits_ours(names), (dtype, sorted(names))
        assert out.dtype == dtype


# ---------------------------------------------------------------------------
# An unmodified nanoGPT-style model (tests/helpers/models.py).

def run_block(block, x):
    block.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    out = block(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), x.grad, {n: p.grad for n, p in block.named_parameters()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nanogpt_block_matches_unpatched(dtype):
    torch.manual_seed(0)
    block = CausalSelfAttention(n_embd=48, n_head=4, dropout=0.0).to(dtype).train()
    x = torch.randn(3, 37, 48, dtype=dtype)

    want_out, want_dx, want_dp = run_block(block, x)
    with torch_selfattn.patch_sdpa():
        (got_out, got_dx, got_dp), names = ops_called(lambda: run_block(block, x))
    assert hits_ours(names) and "selfattn::attention_backward" in names, sorted(names)

    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(got_out, want_out, **tol)
    torch.testing.assert_close(got_dx, want_dx, **tol)
    assert want_dp.keys() == got_dp.keys()
    for name in want_dp:
        torch.testing.assert_close(got_dp[name], want_dp[name], **tol, msg=name)


def test_nanogpt_block_with_dropout_under_patch():
    torch.manual_seed(0)
    block = CausalSelfAttention(n_embd=32, n_head=2, dropout=0.2).train()
    block.resid_dropout.p = 0.0  # only the attention dropout, which is ours
    x = torch.randn(2, 33, 32)
    with torch_selfattn.patch_sdpa():
        torch.manual_seed(1)
        a_out, a_dx, _ = run_block(block, x)
        torch.manual_seed(1)
        b_out, b_dx, _ = run_block(block, x)
        torch.manual_seed(2)
        c_out, _, _ = run_block(block, x)
        block.eval()
        (e_out, names) = ops_called(lambda: block(x).detach())
    assert hits_ours(names)
    for t in (a_out, a_dx, c_out):
        assert torch.isfinite(t).all()
    # torch.manual_seed fixes the dropout; another seed changes it.
    assert torch.equal(a_out, b_out) and torch.equal(a_dx, b_dx)
    assert not torch.equal(a_out, c_out)
    # In eval mode the block passes dropout_p=0: PyTorch's result.
    block.eval()
    with torch.no_grad():
        torch.testing.assert_close(e_out, block(x), atol=1e-5, rtol=1e-4)


def test_nanogpt_block_under_plain_patch_then_unpatch():
    torch.manual_seed(0)
    block = CausalSelfAttention(n_embd=32, n_head=4, dropout=0.0).eval()
    x = torch.randn(1, 20, 32)
    with torch.no_grad():
        want = block(x)
        torch_selfattn.patch_sdpa()
        try:
            got, names = ops_called(lambda: block(x))
        finally:
            torch_selfattn.unpatch_sdpa()
        after, after_names = ops_called(lambda: block(x))
    assert hits_ours(names) and not hits_ours(after_names)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert torch.equal(after, want)
    assert math.isfinite(got.sum().item())
