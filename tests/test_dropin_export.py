"""torch.export with a data-dependent (unbacked) batch size (issue 21): the
shape logic of our SDPA never branches on such a size being 1, so the
program exports, and the exported program runs for any batch, 1 included."""
import pytest
import torch
import torch.nn.functional as F

import torch_selfattn


class SelectRows(torch.nn.Module):
    """Keeps the sequences whose x row is not all zero, then attends."""

    def __init__(self, attend, **options):
        super().__init__()
        self.attend = attend
        self.options = options

    def forward(self, x, q, k, v, mask):
        keep = x.sum(-1) != 0
        q, k, v = q[keep], k[keep], v[keep]
        options = dict(self.options)
        if options.pop("with_mask", False):
            options["attn_mask"] = mask
        return self.attend(q, k, v, **options)


def example(batch=3, kept=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 5, generator=g)
    x[kept:] = 0
    q, k, v = (torch.randn(batch, 2, n, 8, generator=g) for n in (4, 6, 6))
    mask = torch.randn(4, 6, generator=g)
    return x, q, k, v, mask


@pytest.mark.parametrize("options", [dict(), dict(is_causal=True), dict(with_mask=True),
                                     dict(with_mask=True, scale=0.5)], ids=["plain", "causal", "mask", "mask_scale"])
def test_export_with_an_unbacked_batch(options):
    program = torch.export.export(SelectRows(torch_selfattn.scaled_dot_product_attention, **options), example())
    assert "selfattn.scaled_dot_product_attention" in program.graph_module.code
    reference = SelectRows(F.scaled_dot_product_attention, **options)
    # The exported program, run on kept counts the export never saw: 1 is the
    # size a guard on Eq(u0, 1) would have baked in or refused.
    for kept in (2, 1, 3, 0):
        inputs = example(3, kept, seed=kept)
        got = program.module()(*inputs)
        want = reference(*inputs)
        assert got.shape == want.shape == (kept, 2, 4, 8)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_export_of_pytorchs_sdpa_under_the_patch():
    # The same module written against F.scaled_dot_product_attention.
    with torch_selfattn.patch_sdpa():
        program = torch.export.export(SelectRows(lambda *a, **kw: F.scaled_dot_product_attention(*a, **kw),
                                                 is_causal=True), example())
    assert "selfattn.scaled_dot_product_attention" in program.graph_module.code
    inputs = example(3, 1, seed=1)
    torch.testing.assert_close(program.module()(*inputs), SelectRows(F.scaled_dot_product_attention,
                                                                     is_causal=True)(*inputs), atol=1e-5, rtol=1e-5)


def test_unbacked_batch_that_does_not_match_raises_at_run_time():
    # Key and value keep a batch of their own: broadcasting needs the sizes
    # equal, which the exported program checks when it runs.
    class Mismatched(torch.nn.Module):
        def forward(self, x, y, q, k, v):
            q = q[x.sum(-1) != 0]
            return torch_selfattn.scaled_dot_product_attention(q, k[y.sum(-1) != 0], v[y.sum(-1) != 0])

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, n, 8, generator=g) for n in (4, 6, 6))
    x, y = torch.ones(3, 5), torch.ones(3, 5)
    program = torch.export.export(Mismatched(), (x, y, q, k, v))
    torch.testing.assert_close(program.module()(x, y, q, k, v), F.scaled_dot_product_attention(q, k, v),
                               atol=1e-5, rtol=1e-5)
    y[0] = 0
    with pytest.raises(RuntimeError):
        program.module()(x, y, q, k, v)
