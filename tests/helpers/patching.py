"""What the patch_sdpa tests share: PyTorch's own SDPA, a fixture that checks
each test starts and ends unpatched, and the ops a call ran."""
import pytest
import torch
import torch.nn.functional as F

# PyTorch's own function, as the C binding holds it.
ORIGINAL = torch._C._nn.scaled_dot_product_attention


@pytest.fixture(autouse=True)
def restore_sdpa():
    assert F.scaled_dot_product_attention is ORIGINAL, "a previous test left SDPA patched"
    yield
    F.scaled_dot_product_attention = ORIGINAL


def ops_called(fn):
    """Runs fn under the autograd profiler; returns (its result, the set of op
    names recorded)."""
    with torch.autograd.profiler.profile() as prof:
        result = fn()
    return result, {e.name for e in prof.function_events}
