"""torch.autocast with torch-selfattn (issue 21): the user-facing ops cast
their inputs as PyTorch's SDPA does under autocast, and a tiny Llama from
transformers trains under bfloat16 autocast with attn_implementation
"torch_selfattn" as it does with "sdpa"."""
import copy
import os

import pytest
import torch
import torch.nn.functional as F

import torch_selfattn


def randn(*shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# (query, key, value, mask) dtypes, as mixed precision code hands them over:
# RoPE leaves q and k in float32 while v comes from a bfloat16 projection.
DTYPES = [
    (torch.float32, torch.float32, torch.bfloat16, None),
    (torch.float32, torch.float32, torch.float32, torch.float32),
    (torch.bfloat16, torch.float32, torch.bfloat16, torch.bool),
    (torch.float16, torch.float32, torch.float32, torch.float16),
]


@pytest.mark.parametrize("dtypes", DTYPES, ids=lambda d: "-".join(str(t).split(".")[-1] for t in d))
def test_cpu_autocast_casts_as_pytorch(dtypes):
    q_dtype, k_dtype, v_dtype, mask_dtype = dtypes
    q, k, v = randn(2, 3, 5, 8, seed=1, dtype=q_dtype), randn(2, 3, 6, 8, seed=2, dtype=k_dtype), \
        randn(2, 3, 6, 8, seed=3, dtype=v_dtype)
    mask = None if mask_dtype is None else (randn(5, 6, seed=4) > -1 if mask_dtype == torch.bool
                                            else randn(5, 6, seed=4, dtype=mask_dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        got = torch_selfattn.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert got.dtype == want.dtype == torch.bfloat16
    # Both computed from the same bfloat16 inputs.
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)


def test_cpu_autocast_leaves_float64_alone_and_raises_as_pytorch():
    q = randn(2, 4, 8, seed=1, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch_selfattn.scaled_dot_product_attention(q, q, q).dtype == torch.float64
        # float64 beside float32: PyTorch raises, and so do we.
        with pytest.raises(RuntimeError) as theirs:
            F.scaled_dot_product_attention(q, q.float(), q.float())
        with pytest.raises(RuntimeError) as ours:
            torch_selfattn.scaled_dot_product_attention(q, q.float(), q.float())
    assert "Expected query, key, and value to have the same dtype" in str(theirs.value)
    assert "Expected query, key, and value to have the same dtype" in str(ours.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_autocast_casts_as_pytorch():
    if not torch._C._dispatch_has_kernel_for_dispatch_key("selfattn::attention_forward", "CUDA"):
        pytest.skip("built without the CUDA kernels")
    q, k, v = (randn(2, 3, 64, 64, seed=s).cuda() for s in (1, 2, 3))
    with torch.autocast("cuda"):
        want = F.scaled_dot_product_attention(q, k, v.half(), is_causal=True)
        got = torch_selfattn.scaled_dot_product_attention(q, k, v.half(), is_causal=True)
    assert got.dtype == want.dtype == torch.float16
    torch.testing.assert_close(got.float(), want.float(), atol=2e-3, rtol=2e-3)


def test_autocast_gradients_reach_float32_leaves():
    q, k, v = (randn(2, 3, 6, 8, seed=s).requires_grad_() for s in (1, 2, 3))
    grads = []
    for attend in (F.scaled_dot_product_attention, torch_selfattn.scaled_dot_product_attention):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = attend(q, k, v, is_causal=True)
        grads.append(torch.autograd.grad(out.float().square().sum(), (q, k, v)))
    for ours, theirs in zip(grads[1], grads[0]):
        assert ours.dtype == theirs.dtype == torch.float32
        torch.testing.assert_close(ours, theirs, atol=5e-2, rtol=5e-2)


def test_varlen_and_kv_cache_run_under_autocast():
    x = randn(9, 2, 8, seed=5)
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch_selfattn.varlen_attention(x, x, x.bfloat16(), cu, cu, 5, 5).dtype == torch.bfloat16
        q, cache = randn(2, 2, 1, 8, seed=6), randn(2, 2, 7, 8, seed=7)
        lengths = torch.tensor([3, 7])
        assert torch_selfattn.kv_cache_attention(q, cache, cache.bfloat16(), lengths).dtype == torch.bfloat16


# ---------------------------------------------------------------------------
# A tiny Llama trained under bfloat16 autocast.

def train_llama(attn_implementation, steps=2):
    transformers = pytest.importorskip("transformers")
    import torch_selfattn.integrations.huggingface as hf_selfattn
    hf_selfattn.register()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=64)
    model = transformers.LlamaForCausalLM(config)
    model.set_attn_implementation(attn_implementation)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(3, 61, (2, 12), generator=torch.Generator().manual_seed(1))
    losses, first_grads = [], None
    for _ in range(steps):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        if first_grads is None:
            first_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        optimizer.step()
        losses.append(loss.item())
    return losses, first_grads


@pytest.mark.slow  # two training steps of a model, twice
def test_tiny_llama_trains_under_bf16_autocast_as_with_sdpa():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ours, ours_grads = train_llama("torch_selfattn")
    theirs, theirs_grads = train_llama("sdpa")
    assert len(ours) == len(theirs) == 2
    # Same weights, same data, bfloat16 attention in both: the losses agree to
    # bfloat16 rounding, and so do the first step's gradients.
    for a, b in zip(ours, theirs):
        assert abs(a - b) < 1e-3 * abs(b), (ours, theirs)
    assert ours_grads.keys() == theirs_grads.keys()
    for name, want in theirs_grads.items():
        error = (ours_grads[name] - want).norm() / want.norm()
        assert error < 3e-2, (name, error.item())
