"""attention_weights against a float64 softmax reference (heads, rows, GQA,
masks, causal, several row blocks, the fallback without our kernel, low
precision), its memory at L = 8192, and plot_attention."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch

import torch_selfattn.attention_maps as attention_maps
from helpers.reference import assert_within_dtype_rule
from torch_selfattn import attention_weights, plot_attention


def softmax_reference(q, k, attn_mask=None, is_causal=False, scale=None, dtype=torch.float64):
    """softmax(q·kᵀ·scale + mask) in the given dtype for all heads and rows; fully masked rows 0."""
    q, k = q.to(dtype), k.to(dtype).repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    scores = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if is_causal:
        attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
            else scores + attn_mask.to(dtype)
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)


def inputs(shape_q=(2, 4, 37, 16), shape_k=(2, 2, 45, 16), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape_q, generator=g).to(dtype), torch.randn(shape_k, generator=g).to(dtype)


def select(full, heads, rows):
    if heads is not None:
        full = full[..., heads, :, :]
    if rows is not None:
        full = full[..., rows, :]
    return full


SELECTIONS = [(None, None), (2, None), ([3, 0], None), (None, 5), (None, [36, 0, 7]), (slice(1, 3), slice(30, None)),
              ([1], -1)]


@pytest.mark.parametrize("heads, rows", SELECTIONS)
@pytest.mark.parametrize("is_causal", [False, True])
def test_heads_and_rows_against_float64(heads, rows, is_causal):
    q, k = inputs()
    got = attention_weights(q, k, is_causal=is_causal, heads=heads, rows=rows)
    want = select(softmax_reference(q, k, is_causal=is_causal), heads, rows)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mask_shape", [(45,), (37, 45), (2, 1, 37, 45), (1, 4, 1, 45), (2, 4, 37, 1)])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_masks_in_broadcast_shapes(mask_shape, kind):
    q, k = inputs(seed=1)
    g = torch.Generator().manual_seed(2)
    mask = torch.rand(mask_shape, generator=g) > 0.4 if kind == "bool" else torch.randn(mask_shape, generator=g)
    for heads, rows in [(None, None), ([3, 1], [0, 36, 4])]:
        got = attention_weights(q, k, attn_mask=mask, heads=heads, rows=rows, scale=0.3)
        want = select(softmax_reference(q, k, attn_mask=mask, scale=0.3), heads, rows)
        torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)


def test_fully_masked_rows_are_zero_and_other_rows_sum_to_one():
    q, k = inputs()
    mask = torch.ones(37, 45, dtype=torch.bool)
    mask[[3, 20]] = False
    got = attention_weights(q, k, attn_mask=mask)
    assert torch.equal(got[..., [3, 20], :], torch.zeros(2, 4, 2, 45))
    keep = [i for i in range(37) if i not in (3, 20)]
    torch.testing.assert_close(got[..., keep, :].sum(-1), torch.ones(2, 4, 35), atol=1e-5, rtol=0)


def test_several_row_blocks_and_3d_inputs():
    q, k = inputs((3, 600, 8), (3, 500, 8), seed=4)  # 600 rows: more than two blocks
    assert 600 > 2 * attention_maps.ROW_BLOCK
    got = attention_weights(q, k, is_causal=True)
    torch.testing.assert_close(got.double(), softmax_reference(q, k, is_causal=True), atol=1e-6, rtol=0)
    got = attention_weights(q, k, is_causal=True, heads=1, rows=[599, 256, 255, 0])
    torch.testing.assert_close(got.double(), softmax_reference(q, k, is_causal=True)[1, [599, 256, 255, 0]],
                               atol=1e-6, rtol=0)


def test_uses_our_logsumexp_and_the_fallback_agrees(monkeypatch):
    q, k = inputs()
    with torch.autograd.profiler.profile() as prof:
        ours = attention_weights(q, k, is_causal=True, rows=[5, 6])
    assert "selfattn::attention_forward" in {e.name for e in prof.function_events}
    monkeypatch.setattr(attention_maps, "_has_kernel", lambda device_type: False)
    with torch.autograd.profiler.profile() as prof:
        fallback = attention_weights(q, k, is_causal=True, rows=[5, 6])
    assert "selfattn::attention_forward" not in {e.name for e in prof.function_events}
    torch.testing.assert_close(ours, fallback, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_within_the_dtype_rule(dtype):
    q, k = inputs(dtype=dtype, seed=5)
    got = attention_weights(q, k, is_causal=True)
    # PyTorch's math path in that dtype: float32 scores and softmax (float64 for float64), rounded to the dtype.
    pytorch = softmax_reference(q, k, is_causal=True, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    assert_within_dtype_rule("weights", got, pytorch.to(dtype), softmax_reference(q, k, is_causal=True))


def test_not_differentiable_and_leaves_inputs_alone():
    q, k = inputs()
    q.requires_grad_()
    got = attention_weights(q, k)
    assert not got.requires_grad and q.grad is None


@pytest.mark.parametrize("call, error, message", [
    (lambda q, k: attention_weights(q, k, heads=4), IndexError, "heads \\[4\\] out of range for size 4"),
    (lambda q, k: attention_weights(q, k, rows=[0, -38]), IndexError, "rows \\[0, -38\\] out of range"),
    (lambda q, k: attention_weights(q, k, rows=0.5), ValueError, "rows must be None, an int, a slice"),
    (lambda q, k: attention_weights(q[0, 0], k[0, 0]), ValueError, "query must be a floating-point tensor"),
    (lambda q, k: attention_weights(q, k[:, :, :, :8]), ValueError, "the same head_dim"),
    (lambda q, k: attention_weights(q, torch.cat([k, k, k])), ValueError, "batch dims of query \\(2,\\) and key "
                                                                          "\\(6,\\) do not broadcast"),
    (lambda q, k: attention_weights(q, k[:, :1].expand(2, 3, 45, 16)[:, :3]), ValueError, "multiple"),
    (lambda q, k: attention_weights(q, k.double()), ValueError, "share dtype and device"),
    (lambda q, k: attention_weights(q, k, attn_mask=torch.ones(37, 45, dtype=torch.bool), is_causal=True),
     ValueError, "attn_mask and is_causal=True"),
    (lambda q, k: attention_weights(q, k, attn_mask=torch.ones(37, 44)), ValueError, "does not broadcast"),
    (lambda q, k: attention_weights(q, k, attn_mask=torch.ones(37, 45, dtype=torch.long)), ValueError,
     "bool or floating point"),
])
def test_bad_arguments(call, error, message):
    q, k = inputs()
    with pytest.raises(error, match=message):
        call(q, k)


@pytest.mark.slow
def test_one_head_at_8k_needs_no_map_of_every_head():
    """One head's causal map at L = S = 8192 is 256 MiB; all 8 heads' would be
    2 GiB. The peak resident set of a child process may grow by the result and
    a few row blocks, not by more."""
    child = textwrap.dedent("""
        import json, torch, torch_selfattn
        def peak_mib():  # VmHWM: this process's own peak (see test_memory.py)
            with open("/proc/self/status") as status:
                return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
        g = torch.Generator().manual_seed(0)
        q, k = (torch.randn(1, 8, 8192, 64, generator=g) for _ in range(2))
        torch_selfattn.attention_weights(q[..., :512, :], k[..., :512, :], is_causal=True, heads=3)  # warm-up
        before = peak_mib()
        w = torch_selfattn.attention_weights(q, k, is_causal=True, heads=3)
        after = peak_mib()
        rows = [0, 1, 4095, 8191]
        s = (q[0, 3, rows].double() @ k[0, 3].double().T) / 8
        s = s.masked_fill(torch.arange(8192)[None, :] > torch.tensor(rows)[:, None], float("-inf"))
        err = (w[0, rows].double() - torch.softmax(s, -1)).abs().max().item()
        # The measurement must see a map of every head if there were one.
        control_before = peak_mib()
        all_heads = torch.ones(8, 8192, 8192)
        control = peak_mib() - control_before
        print(json.dumps({"growth": after - before, "shape": list(w.shape), "err": err, "control": control}))
    """)
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["shape"] == [1, 8192, 8192]
    assert report["err"] < 1e-6
    result_mib, all_heads_mib = 256, 8 * 256
    assert report["growth"] < result_mib + 96, report  # the result plus row blocks and q·k of one head
    assert report["growth"] < all_heads_mib / 4, report
    assert report["control"] > all_heads_mib / 2, report


def test_plot_attention_writes_a_png_with_token_labels(tmp_path):
    pytest.importorskip("matplotlib")
    q, k = inputs((1, 2, 6, 8), (1, 2, 6, 8))
    weights = attention_weights(q[0], k[0], is_causal=True, heads=1)
    path = tmp_path / "map.png"
    fig = plot_attention(weights, tokens=list("abcdef"), title="layer 0, head 1", path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list("abcdef")
    assert [t.get_text() for t in ax.get_yticklabels()] == list("abcdef")
    assert ax.get_title() == "layer 0, head 1"
    assert torch.equal(torch.as_tensor(ax.images[0].get_array()), weights)


def test_plot_attention_bad_input_and_missing_matplotlib(monkeypatch):
    with pytest.raises(ValueError, match="weights must be 2-D"):
        plot_attention(torch.rand(2, 3, 3))
    with pytest.raises(ValueError, match="tokens has 2 labels for 3 positions"):
        plot_attention(torch.rand(3, 3), tokens=["a", "b"])
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="plot_attention needs matplotlib: pip install matplotlib"):
        plot_attention(torch.rand(3, 3))
