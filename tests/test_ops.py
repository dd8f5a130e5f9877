"""The ops as the dispatcher sees them: schemas, fake tensors, autograd
registration and torch.compile."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torch_selfattn

ops = torch.ops.selfattn


def make_inputs(dtype=torch.float32, B=2, Hq=4, H=2, L=33, S=47, E=16, Ev=8, requires_grad=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, L, E, generator=g, dtype=dtype, requires_grad=requires_grad)
    k = torch.randn(B, H, S, E, generator=g, dtype=dtype, requires_grad=requires_grad)
    v = torch.randn(B, H, S, Ev, generator=g, dtype=dtype, requires_grad=requires_grad)
    return q, k, v


def forward_cases():
    q, k, v = make_inputs()
    float_mask = torch.randn(1, 4, 33, 47, requires_grad=True)
    bool_mask = torch.rand(2, 1, 33, 47) > 0.3
    return {
        "plain": (q, k, v, None, 0.0, False, 0.25),
        "causal": (q, k, v, None, 0.0, True, 0.25),
        "float_mask": (q, k, v, float_mask, 0.0, False, 0.25),
        "bool_mask": (q, k, v, bool_mask, 0.0, False, -0.5),
    }


@pytest.mark.parametrize("case", ["plain", "causal", "float_mask", "bool_mask"])
def test_opcheck_attention_forward(case):
    torch.library.opcheck(ops.attention_forward.default, forward_cases()[case])


def test_opcheck_attention_forward_with_dropout():
    # Dropout draws from the default generator, so eager and fake runs differ in
    # values; opcheck's schema, fake-tensor and autograd-registration checks
    # still apply.
    torch.library.opcheck(
        ops.attention_forward.default,
        forward_cases()["plain"][:4] + (0.3, False, 0.25),
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )


@pytest.mark.parametrize("mask_grad", [False, True])
def test_opcheck_attention_backward(mask_grad):
    q, k, v = make_inputs(requires_grad=False)
    mask = torch.randn(2, 1, 33, 1)
    out, lse, rng = ops.attention_forward(q, k, v, mask, 0.0, False, 0.25)
    grad_out = torch.randn_like(out)
    torch.library.opcheck(
        ops.attention_backward.default, (grad_out, q, k, v, mask, out, lse, rng, 0.0, False, 0.25, mask_grad)
    )


@pytest.mark.parametrize("kwargs", [{}, {"is_causal": True}, {"enable_gqa": True}, {"scale": 0.3}])
def test_opcheck_scaled_dot_product_attention(kwargs):
    q, k, v = make_inputs()
    if not kwargs.get("enable_gqa"):
        k, v = (t.detach().repeat_interleave(2, dim=1).requires_grad_() for t in (k, v))
    torch.library.opcheck(ops.scaled_dot_product_attention.default, (q, k, v), kwargs)


@pytest.mark.parametrize(
    "op, allowed",
    [
        ("cpu_tile_gemm", lambda r: r in ("avx2", "blas", "portable")),
        (
            "cpu_kernel_paths",
            lambda r: r[0] in ("x86-64-v4 (AVX-512)", "x86-64-v3 (AVX2)", "baseline")
            and r[1] in ("matrix units (AMX)", "float products"),
        ),
    ],
)
def test_opcheck_diagnostic_ops(op, allowed):
    # Diagnostic ops with no tensors: their string results are outside what
    # the AOT-dispatch comparison of opcheck handles, the other checks apply.
    result = torch.library.opcheck(
        getattr(ops, op).default, (), test_utils=("test_schema", "test_autograd_registration", "test_faketensor")
    )
    assert set(result.values()) == {"SUCCESS"}
    assert allowed(getattr(ops, op)())


def test_meta_shapes_and_dtypes():
    q, k, v = (t.detach().to("meta") for t in make_inputs(dtype=torch.bfloat16))
    out, lse, rng = ops.attention_forward(q, k, v, None, 0.0, False, 0.25)
    assert out.shape == (2, 4, 33, 8) and out.dtype == torch.bfloat16 and out.device.type == "meta"
    assert lse.shape == (2, 4, 33) and lse.dtype == torch.float32
    assert rng.shape == (2,) and rng.dtype == torch.int64
    out5 = torch_selfattn.scaled_dot_product_attention(
        torch.empty(3, 2, 4, 5, 16, device="meta"), torch.empty(3, 2, 4, 7, 16, device="meta"),
        torch.empty(3, 2, 4, 7, 9, device="meta"),
    )
    assert out5.shape == (3, 2, 4, 5, 9)


def test_fake_tensor_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k, v = (torch.empty(2, 8, 64, 32), torch.empty(2, 2, 80, 32), torch.empty(2, 2, 80, 16))
        out = torch_selfattn.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert out.shape == (2, 8, 64, 16)


def attention_function(q, k, v, mask):
    return torch_selfattn.scaled_dot_product_attention(q, k, v, attn_mask=mask) * 2 + 1


def assert_close_to_eager(eager, compiled):
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_function_fullgraph(dynamic):
    torch._dynamo.reset()
    q, k, v = make_inputs(H=4)
    mask = torch.randn(33, 47, requires_grad=True)
    compiled = torch.compile(attention_function, fullgraph=True, dynamic=dynamic)
    leaves = (q, k, v, mask)

    eager_out = attention_function(*leaves)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), leaves)
    compiled_out = compiled(*leaves)
    compiled_grads = torch.autograd.grad(compiled_out.square().sum(), leaves)
    assert_close_to_eager(eager_out, compiled_out)
    for e, c in zip(eager_grads, compiled_grads):
        assert_close_to_eager(e, c)


class Block(nn.Module):
    """A pre-norm transformer block whose attention is torch_selfattn's."""

    def __init__(self, dim=64, heads=4, kv_heads=2):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * kv_heads * self.head_dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        B, L, D = x.shape
        h = self.norm1(x)
        q = self.q(h).view(B, L, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(h).view(B, L, 2, self.kv_heads, self.head_dim).unbind(2)
        y = torch_selfattn.scaled_dot_product_attention(
            q, k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
        )
        x = x + self.proj(y.transpose(1, 2).reshape(B, L, D))
        return x + self.mlp(self.norm2(x))


@pytest.mark.slow
def test_compile_transformer_block_fullgraph():
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = Block()
    x = torch.randn(2, 40, 64)
    compiled = torch.compile(block, fullgraph=True)

    eager_loss = block(x).square().mean()
    eager_grads = torch.autograd.grad(eager_loss, list(block.parameters()))
    compiled_loss = compiled(x).square().mean()
    compiled_grads = torch.autograd.grad(compiled_loss, list(block.parameters()))
    assert_close_to_eager(eager_loss, compiled_loss)
    for e, c in zip(eager_grads, compiled_grads):
        assert_close_to_eager(e, c)


def test_compiled_block_matches_pytorch_sdpa():
    """The compiled block agrees with the same block on PyTorch's SDPA."""
    torch._dynamo.reset()
    torch.manual_seed(1)
    block = Block()
    x = torch.randn(2, 40, 64)
    ours = torch.compile(block, fullgraph=True)(x)
    original = torch_selfattn.scaled_dot_product_attention
    try:
        torch_selfattn.scaled_dot_product_attention = F.scaled_dot_product_attention
        reference = block(x)
    finally:
        torch_selfattn.scaled_dot_product_attention = original
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


def test_autograd_from_the_core_op_directly():
    """The C++ autograd kernel: differentiating attention_forward needs no
    Python. The output and the logsumexp are differentiable (their gradient:
    tests/test_logsumexp.py), the dropout state is not."""
    q, k, v = make_inputs(dtype=torch.float64)
    out, lse, rng = ops.attention_forward(q, k, v, None, 0.0, True, 0.3)
    assert out.requires_grad and lse.requires_grad and not rng.requires_grad
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    reference = F.scaled_dot_product_attention(
        q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), is_causal=True, scale=0.3
    )
    ref_grads = torch.autograd.grad(reference.sum(), (q, k, v))
    torch.testing.assert_close(out, reference, rtol=1e-10, atol=1e-10)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_compile_with_dropout_draws_like_eager():
    """Under torch.compile the op still draws its seed from the default
    generator: the same torch.manual_seed gives eager's output and gradients."""
    torch._dynamo.reset()

    def attention_with_dropout(q, k, v):
        return torch_selfattn.scaled_dot_product_attention(q, k, v, dropout_p=0.3)

    compiled = torch.compile(attention_with_dropout, fullgraph=True)
    q, k, v = make_inputs(H=4)
    results = []
    for fn in (compiled, attention_with_dropout):
        torch.manual_seed(5)
        out = fn(q, k, v)
        results.append((out, torch.autograd.grad(out.square().sum(), (q, k, v))))
    (c_out, c_grads), (e_out, e_grads) = results
    torch.testing.assert_close(c_out, e_out)
    for c, e in zip(c_grads, e_grads):
        torch.testing.assert_close(c, e)
    torch.manual_seed(6)
    assert not torch.equal(compiled(q, k, v), c_out), "a new seed must draw a new dropout mask"
