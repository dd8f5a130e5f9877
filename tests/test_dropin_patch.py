"""patch_sdpa() as a transparent drop-in (issue 21): CausalBias and other
__torch_function__ objects, tensor subclasses, TorchScript, torch.compile with
fullgraph=True, and nested patches."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right, causal_upper_left

import torch_selfattn
# PyTorch's own function, the fixture that restores it after each test, and
# the profiler helper.
from helpers.patching import ORIGINAL, ops_called, restore_sdpa  # noqa: F401 (an autouse fixture)


def qkv(L, S, B=2, H=3, E=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, E, generator=g, dtype=dtype) for n in (L, S, S)]


# ---------------------------------------------------------------------------
# CausalBias: honoured, never read as raw storage.

@pytest.mark.filterwarnings("ignore::UserWarning")  # causal_lower_right at L > S warns about empty rows
@pytest.mark.parametrize("make_bias", [causal_upper_left, causal_lower_right])
@pytest.mark.parametrize("L, S", [(4, 6), (6, 6), (6, 4)])
def test_causal_bias_matches_pytorch(make_bias, L, S):
    q, k, v = (t.requires_grad_() for t in qkv(L, S))
    want = ORIGINAL(q, k, v, attn_mask=make_bias(L, S))
    want_grads = torch.autograd.grad(want.sum(), (q, k, v))
    with torch_selfattn.patch_sdpa():
        got, names = ops_called(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=make_bias(L, S)))
    # The bias dispatched itself to the patched function with plain tensors.
    assert "selfattn::attention_forward" in names, sorted(names)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for g, w in zip(torch.autograd.grad(got.sum(), (q, k, v)), want_grads):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_causal_bias_with_is_causal_raises_pytorchs_error():
    q, k, v = qkv(4, 6)
    with pytest.raises(ValueError, match="CausalBias should not be used with causal=True"):
        with torch_selfattn.patch_sdpa():
            F.scaled_dot_product_attention(q, k, v, attn_mask=causal_upper_left(4, 6), is_causal=True)


class Tagged(torch.Tensor):
    """A tensor subclass with no semantics of its own but its type."""


def test_tensor_subclass_goes_to_pytorch():
    q, k, v = qkv(5, 5)
    tagged = [t.as_subclass(Tagged) for t in (q, k, v)]
    with torch_selfattn.patch_sdpa():
        got, names = ops_called(lambda: F.scaled_dot_product_attention(*tagged))
    assert "selfattn::attention_forward" not in names, sorted(names)
    assert type(got) is Tagged
    torch.testing.assert_close(got.as_subclass(torch.Tensor), ORIGINAL(q, k, v))


def test_torch_function_mode_sees_the_patched_function():
    seen = []

    class Recorder(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    q, k, v = qkv(5, 5)
    with torch_selfattn.patch_sdpa():
        with Recorder():
            got = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        patched = F.scaled_dot_product_attention
    assert patched in seen
    torch.testing.assert_close(got, ORIGINAL(q, k, v, is_causal=True), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------
# TorchScript: scripting keeps working under the patch.

@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize("make", [
    lambda: nn.MultiheadAttention(16, 2),
    lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0), 2,
                                  enable_nested_tensor=False),
    lambda: nn.Transformer(16, 2, 1, 1, dim_feedforward=32, dropout=0.0),
], ids=["MultiheadAttention", "TransformerEncoder", "Transformer"])
def test_jit_script_of_torch_modules_under_the_patch(make):
    torch.manual_seed(0)
    module = make().eval()
    x = torch.randn(7, 3, 16)
    args = (x, x, x) if isinstance(module, nn.MultiheadAttention) else (x, x) if isinstance(module, nn.Transformer) \
        else (x,)
    want = module(*args)
    with torch_selfattn.patch_sdpa():
        scripted = torch.jit.script(module)
        got = scripted(*args)
        eager = module(*args)
    first = (lambda r: r[0] if isinstance(r, tuple) else r)
    torch.testing.assert_close(first(got), first(want), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first(eager), first(want), atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_scripted_function_calling_sdpa_uses_pytorchs():
    with torch_selfattn.patch_sdpa():
        @torch.jit.script
        def attend(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    q, k, v = qkv(5, 5)
    got, names = ops_called(lambda: attend(q, k, v))
    assert "selfattn::attention_forward" not in names
    torch.testing.assert_close(got, ORIGINAL(q, k, v, is_causal=True))


# ---------------------------------------------------------------------------
# torch.compile(fullgraph=True) traces the patched function.

def test_compile_fullgraph_traces_into_our_op():
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def attend(q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask) * 2

    q, k, v = qkv(6, 9)
    mask = torch.randn(6, 9)
    torch._dynamo.reset()
    with torch_selfattn.patch_sdpa():
        got = torch.compile(attend, backend=backend, fullgraph=True)(q, k, v, mask)
    torch._dynamo.reset()
    assert len(graphs) == 1
    assert "torch.ops.selfattn.scaled_dot_product_attention" in graphs[0].code, graphs[0].code
    torch.testing.assert_close(got, ORIGINAL(q, k, v, attn_mask=mask) * 2, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # torch.compile of a module and its backward
def test_compile_fullgraph_of_a_module_with_gradients():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2, batch_first=True)
    x = torch.randn(2, 7, 16)

    def loss(module):
        out, _ = module(x, x, x, need_weights=False)
        return out.square().sum()

    want = torch.autograd.grad(loss(mha), list(mha.parameters()))
    torch._dynamo.reset()
    with torch_selfattn.patch_sdpa():
        compiled = torch.compile(mha, backend="aot_eager", fullgraph=True)
        got = torch.autograd.grad(loss(compiled), list(mha.parameters()))
    torch._dynamo.reset()
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------
# Nested patches unwind one level at a time.

def test_nested_patches_restore_what_was_there_before():
    q, k, v = qkv(5, 5)
    with torch_selfattn.patch_sdpa():
        patched = F.scaled_dot_product_attention
        with torch_selfattn.patch_sdpa():
            pass
        assert F.scaled_dot_product_attention is patched
        _, names = ops_called(lambda: F.scaled_dot_product_attention(q, k, v))
        assert "selfattn::attention_forward" in names
    assert F.scaled_dot_product_attention is ORIGINAL


def test_patch_block_inside_a_plain_patch_leaves_it_in_place():
    torch_selfattn.patch_sdpa()
    patched = F.scaled_dot_product_attention
    with torch_selfattn.patch_sdpa():
        pass
    assert F.scaled_dot_product_attention is patched
    torch_selfattn.unpatch_sdpa()
    assert F.scaled_dot_product_attention is ORIGINAL


def test_patch_block_restores_someone_elses_function():
    def theirs(*args, **kwargs):
        return ORIGINAL(*args, **kwargs)

    F.scaled_dot_product_attention = theirs
    with torch_selfattn.patch_sdpa():
        assert F.scaled_dot_product_attention is not theirs
    assert F.scaled_dot_product_attention is theirs


def test_parameter_mask_goes_to_our_kernels():
    # A learned bias held as an nn.Parameter is a plain tensor to us.
    q, k, v = qkv(5, 5)
    bias = nn.Parameter(torch.randn(5, 5))
    with torch_selfattn.patch_sdpa():
        got, names = ops_called(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias))
    assert "selfattn::attention_forward" in names, sorted(names)
    (ours,) = torch.autograd.grad(got.sum(), bias)
    (theirs,) = torch.autograd.grad(ORIGINAL(q, k, v, attn_mask=bias).sum(), bias)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
