"""The CUDA backward under torch.use_deterministic_algorithms(True): bit for
bit the same gradients run after run, still within the reference's
tolerance; and an error, as PyTorch gives, for the one gradient it cannot
make deterministic (a broadcast attention mask's)."""
import pytest
import torch

import torch_selfattn
from helpers.cuda import HALF_DTYPES, HALF_IDS, cuda_qkv, cuda_randn, requires_cuda_kernels

pytestmark = requires_cuda_kernels

RUNS = 20


@pytest.fixture
def deterministic():
    before, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before, warn_only=warn_only)


def gradients(q, k, v, grad_out, **kwargs):
    for t in (q, k, v):
        t.grad = None
    torch_selfattn.scaled_dot_product_attention(q, k, v, **kwargs).backward(grad_out)
    return [t.grad.clone() for t in (q, k, v)]


# Long enough for several key blocks of every backward shape (64 and 128
# keys), GQA so that a block's dQ additions come from several query heads.
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=HALF_IDS)
@pytest.mark.parametrize("E", [64, 128])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_backward_is_bit_identical_run_after_run(deterministic, dtype, E, causal):
    q, k, v = cuda_qkv(dtype, B=2, Hq=4, H=2, L=700, S=900, E=E, seed=E + causal)
    g = torch.Generator().manual_seed(7)
    grad_out = cuda_randn(q.shape, dtype, g, requires_grad=False)
    first = gradients(q, k, v, grad_out, is_causal=causal, enable_gqa=True)
    for run in range(1, RUNS):
        again = gradients(q, k, v, grad_out, is_causal=causal, enable_gqa=True)
        for name, a, b in zip("qkv", first, again):
            assert torch.equal(a, b), f"run {run}: d{name} differs from run 0 in deterministic mode"


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=HALF_IDS)
def test_deterministic_backward_matches_the_usual_one(dtype):
    # The usual backward is checked against the float64 reference elsewhere;
    # the deterministic one differs only in the order of dQ's float32
    # additions (dK and dV have one writer either way), so dQ may differ by
    # the rounding to the dtype and no more. (The reference itself cannot
    # run in deterministic mode: its float64 matmuls take cuBLAS, which
    # PyTorch refuses there without CUBLAS_WORKSPACE_CONFIG.)
    q, k, v = cuda_qkv(dtype, Hq=4, H=2, L=333, S=517, E=96, seed=3)
    grad_out = cuda_randn(q.shape, dtype, torch.Generator().manual_seed(4), requires_grad=False)
    usual = gradients(q, k, v, grad_out, is_causal=True, enable_gqa=True)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        ordered = gradients(q, k, v, grad_out, is_causal=True, enable_gqa=True)
    finally:
        torch.use_deterministic_algorithms(before)
    assert torch.equal(ordered[1], usual[1]) and torch.equal(ordered[2], usual[2])
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(ordered[0], usual[0], rtol=2 * eps, atol=2 * eps * usual[0].abs().max().item())


def test_gradient_of_a_broadcast_mask_is_not_deterministic(deterministic):
    q, k, v = cuda_qkv(torch.bfloat16, Hq=2, L=64, S=80, E=64, seed=5)
    mask = torch.randn(1, 1, 64, 80, device=q.device, dtype=torch.bfloat16, requires_grad=True)
    out = torch_selfattn.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with pytest.raises(RuntimeError, match="does not have a deterministic implementation"):
        out.sum().backward()
