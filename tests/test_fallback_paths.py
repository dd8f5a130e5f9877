"""The kernels' fallback paths, forced on a machine whose fast paths would
run instead: bfloat16 through float products rather than the CPU's matrix
units, and a backward that recomputes P and dP rather than keeping them
between its sweeps (what it does once a row of tiles passes its memory
budget). The switches are read once per process, so the checks run in a
child, with the same float64 reference and dtype rule as test_numerics."""
import os
import subprocess
import sys
import textwrap

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))

CHILD = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {tests!r})
    from helpers.reference import check_against_reference
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.bfloat16, torch.float32, torch.float64):
        for causal in (False, True):
            def rand(*shape):
                return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
            q, k, v = rand(2, 4, 300, 32), rand(2, 2, 700, 32), rand(2, 2, 700, 24)
            check_against_reference(q, k, v, is_causal=causal, enable_gqa=True)
            mask = rand(300, 700)
            check_against_reference(q, k, v, attn_mask=mask, enable_gqa=True)
    print("checked")
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("switch", ["TORCH_SELFATTN_NO_MATRIX_UNITS", "TORCH_SELFATTN_NO_TILE_STORE"])
def test_fallback_path_matches_reference(switch):
    env = dict(os.environ, **{switch: "1"})
    child = CHILD.format(tests=TESTS)
    result = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "checked" in result.stdout
