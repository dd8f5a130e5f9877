"""MultiheadSelfAttention: float64 reference of the whole module (outputs and
every gradient), PyTorch's nn.MultiheadAttention with the same weights, GQA,
masks combined with causal, dropout in train and eval mode, and bad arguments."""
import copy

import pytest
import torch
import torch.nn as nn

from helpers.reference import assert_within_dtype_rule, pytorch_sdpa
from torch_selfattn import MultiheadSelfAttention


def ops_called(fn):
    with torch.autograd.profiler.profile() as prof:
        result = fn()
    return result, {e.name for e in prof.function_events}


def forward_backward(module, x, attn_mask=None):
    """Output, grad of the input and of every parameter, for a fixed output gradient."""
    x = x.detach().clone().requires_grad_()
    out = module(x, attn_mask)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(out.dtype)
    grads = torch.autograd.grad(out, [x, *module.parameters()], grad_out)
    names = ["output", "grad input"] + [f"grad {n}" for n, _ in module.named_parameters()]
    return dict(zip(names, [out, *grads]))


def check_module(module, x, attn_mask=None):
    """Ours (float32) and the same module on PyTorch's SDPA (float32) against
    that module in float64: the dtype rule for the output and every gradient."""
    pytorch_module = copy.deepcopy(module)
    pytorch_module.attention_fn = pytorch_sdpa
    reference_module = copy.deepcopy(pytorch_module).double()
    got = forward_backward(module, x, attn_mask)
    pytorch = forward_backward(pytorch_module, x, attn_mask)
    mask64 = attn_mask.double() if attn_mask is not None and attn_mask.is_floating_point() else attn_mask
    expected = forward_backward(reference_module, x.double(), mask64)
    for name in expected:
        assert_within_dtype_rule(name, got[name], pytorch[name], expected[name])


def random_mask(kind, shape, generator):
    if kind == "bool":
        mask = torch.rand(shape, generator=generator) > 0.3
        mask[..., 0] = True  # every query keeps a key, also under causal
        return mask
    return torch.randn(shape, generator=generator)


@pytest.mark.parametrize("num_kv_heads", [None, 2, 1])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
def test_matches_float64_reference(num_kv_heads, causal, mask_kind):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    module = MultiheadSelfAttention(48, 4, num_kv_heads=num_kv_heads, is_causal=causal)
    x = torch.randn(3, 21, 48, generator=g)
    mask = None if mask_kind is None else random_mask(mask_kind, (3, 1, 21, 21), g)
    check_module(module, x, mask)


def test_no_bias_and_odd_sizes():
    torch.manual_seed(1)
    module = MultiheadSelfAttention(40, 5, num_kv_heads=5, is_causal=True, bias=False)
    assert module.qkv_proj.bias is None and module.out_proj.bias is None
    check_module(module, torch.randn(2, 67, 40, generator=torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("causal", [False, True])
def test_same_as_nn_multihead_attention_with_the_same_weights(causal):
    torch.manual_seed(0)
    ours = MultiheadSelfAttention(32, 4, is_causal=causal).eval()
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(ours.qkv_proj.weight)
        mha.in_proj_bias.copy_(ours.qkv_proj.bias)
        mha.out_proj.weight.copy_(ours.out_proj.weight)
        mha.out_proj.bias.copy_(ours.out_proj.bias)
    x = torch.randn(2, 13, 32)
    mask = nn.Transformer.generate_square_subsequent_mask(13) if causal else None
    want, _ = mha(x, x, x, attn_mask=mask, need_weights=False)
    got, names = ops_called(lambda: ours(x))
    assert "selfattn::attention_forward" in names
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_gqa_runs_on_the_kernels_without_repeating_key_and_value():
    torch.manual_seed(0)
    module = MultiheadSelfAttention(64, 8, num_kv_heads=2, is_causal=True)
    assert module.qkv_proj.out_features == (8 + 2 * 2) * 8
    x = torch.randn(2, 10, 64)
    out, names = ops_called(lambda: module(x))
    assert out.shape == x.shape
    assert "selfattn::attention_forward" in names
    assert not any("repeat" in n for n in names), sorted(names)


@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_causal_with_a_mask_is_the_mask_with_the_causal_pattern_folded_in(mask_kind):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    causal = MultiheadSelfAttention(24, 3, is_causal=True)
    plain = copy.deepcopy(causal)
    plain.is_causal = False
    x = torch.randn(2, 9, 24, generator=g)
    mask = random_mask(mask_kind, (9, 9), g)
    lower = torch.ones(9, 9, dtype=torch.bool).tril()
    folded = mask & lower if mask_kind == "bool" else mask.masked_fill(~lower, float("-inf"))
    torch.testing.assert_close(causal(x, mask), plain(x, folded), atol=0, rtol=0)


def test_causal_is_another_name_for_is_causal():
    # The module's earlier name for the option, kept: the same setting.
    module = MultiheadSelfAttention(24, 3, causal=True)
    assert module.is_causal and module.causal
    module.causal = False
    assert not module.is_causal
    assert MultiheadSelfAttention(24, 3, is_causal=True, causal=True).is_causal
    with pytest.raises(ValueError, match="is_causal=True and causal=False contradict each other"):
        MultiheadSelfAttention(24, 3, is_causal=True, causal=False)


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    module = MultiheadSelfAttention(32, 4, dropout=0.5, is_causal=True)
    no_dropout = copy.deepcopy(module)
    no_dropout.dropout = 0.0
    x = torch.randn(2, 16, 32)
    module.train()
    torch.manual_seed(5)
    a = module(x)
    torch.manual_seed(5)
    b = module(x)
    torch.manual_seed(6)
    c = module(x)
    assert torch.equal(a, b), "torch.manual_seed must fix the dropout"
    assert not torch.allclose(a, c), "another seed must drop other weights"
    assert not torch.allclose(a, no_dropout(x)), "training mode must drop"
    module.eval()
    torch.testing.assert_close(module(x), no_dropout(x), atol=0, rtol=0)


def test_attention_weights_method_is_the_softmax_of_the_module():
    torch.manual_seed(0)
    module = MultiheadSelfAttention(32, 4, num_kv_heads=2, is_causal=True)
    x = torch.randn(2, 11, 32)
    q, k, _ = (t.double() for t in module._heads(x))
    k = k.repeat_interleave(2, dim=1)
    scores = (q @ k.transpose(-2, -1)) / 8 ** 0.5
    scores = scores.masked_fill(~torch.ones(11, 11, dtype=torch.bool).tril(), float("-inf"))
    want = torch.softmax(scores, dim=-1)
    got = module.attention_weights(x, heads=[3, 0], rows=[10, 2])
    torch.testing.assert_close(got.double(), want[:, [3, 0]][:, :, [10, 2]], atol=1e-6, rtol=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(embed_dim=30, num_heads=4), "embed_dim \\(30\\) must be a positive multiple of num_heads \\(4\\)"),
    (dict(embed_dim=32, num_heads=4, num_kv_heads=3), "num_kv_heads \\(3\\) must divide num_heads \\(4\\)"),
    (dict(embed_dim=32, num_heads=4, dropout=1.0), "dropout must be in \\[0, 1\\)"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiheadSelfAttention(**kwargs)


def test_bad_input_shape():
    module = MultiheadSelfAttention(16, 2)
    with pytest.raises(ValueError, match="input must be \\(batch, length, 16\\), got \\(3, 16\\)"):
        module(torch.randn(3, 16))
    with pytest.raises(ValueError, match="got \\(1, 3, 8\\)"):
        module(torch.randn(1, 3, 8))
