"""The portable tile products, used where torch exports no BLAS symbols. The
environment variable is read once per process, so the check runs in a child."""
import os
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import torch, torch.nn.functional as F, torch_selfattn
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        q = torch.randn(2, 4, 70, 24, generator=g, dtype=dtype, requires_grad=True)
        k = torch.randn(2, 2, 150, 24, generator=g, dtype=dtype, requires_grad=True)
        v = torch.randn(2, 2, 150, 12, generator=g, dtype=dtype, requires_grad=True)
        mask = torch.randn(70, 150, generator=g, dtype=dtype, requires_grad=True)
        leaves = (q, k, v, mask)
        out = torch_selfattn.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        grads = torch.autograd.grad(out.square().sum(), leaves)
        ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
        ref = F.scaled_dot_product_attention(*ref_leaves[:3], attn_mask=ref_leaves[3], enable_gqa=True)
        ref_grads = torch.autograd.grad(ref.square().sum(), ref_leaves)
        tol = 1e-4 if dtype == torch.float32 else 1e-10
        assert (out.double() - ref).abs().max() < tol, "output"
        for got, want in zip(grads, ref_grads):
            assert (got.double() - want).abs().max() < tol * 10, "gradient"
    print("uses_blas", torch_selfattn.build_info()["tile_gemm"])
    """
)


@pytest.mark.slow
def test_portable_tile_products_match_reference():
    env = dict(os.environ, TORCH_SELFATTN_PORTABLE_GEMM="1")
    result = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "uses_blas portable" in result.stdout
