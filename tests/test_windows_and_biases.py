"""Sliding windows, causal alignment, ALiBi and softcap through
scaled_dot_product_attention: outputs and gradients (q, k, v and a float
mask) against the float64 explicit-mask reference of tests/helpers/feature_reference.py,
under the dtype rule of tests/helpers/reference.py."""
import os
import subprocess
import sys

import pytest
import torch

import torch_selfattn

from helpers.feature_reference import check_features, diagonal_distance, explicit_attention, visible_keys
from helpers.reference import dropout_multipliers, ours

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
TESTS = os.path.dirname(os.path.abspath(__file__))


def make_inputs(B=1, Hq=4, H=2, L=37, S=37, E=16, Ev=12, dtype=torch.float32, seed=0, spread=1.0):
    """Fresh random q, k, v that require grad; `spread` scales q, so that the
    scores reach a softcap's saturation."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, L, E, generator=g, dtype=torch.float64) * spread
    k = torch.randn(B, H, S, E, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, S, Ev, generator=g, dtype=torch.float64)
    return [t.to(dtype).requires_grad_() for t in (q, k, v)]


def float_mask(L, S, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(L, S, generator=g, dtype=torch.float64).to(dtype).requires_grad_()


def geometric_slopes(heads):
    """ALiBi's slopes for `heads` heads: 2^(-8h/heads), h = 1..heads."""
    return 2.0 ** (-8.0 * torch.arange(1, heads + 1) / heads)


WINDOWS = {"left": (5, -1), "right": (-1, 3), "both": (4, 6), "zero": (0, 0), "wider_than_S": (200, 200)}


# 180 cases: float32's run in the fast loop, the other dtypes' are slow.
@pytest.mark.parametrize("dtype", [pytest.param(dtype, id=str(dtype),
                                                marks=() if dtype == torch.float32 else pytest.mark.slow)
                                   for dtype in DTYPES])
@pytest.mark.parametrize("L,S", [(37, 37), (23, 53), (53, 23)], ids=["L=S", "L<S", "L>S"])
@pytest.mark.parametrize("window", list(WINDOWS.values()), ids=list(WINDOWS))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("alignment", ["top_left", "bottom_right"])
def test_window_alignment_and_shapes(dtype, L, S, window, causal, alignment):
    q, k, v = make_inputs(L=L, S=S, dtype=dtype)
    check_features(q, k, v, is_causal=causal, enable_gqa=True, window=window, causal_alignment=alignment)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("L,S", [(29, 29), (19, 41), (41, 19)], ids=["L=S", "L<S", "L>S"])
@pytest.mark.parametrize("alignment", ["top_left", "bottom_right"])
def test_bottom_right_causal_without_window(dtype, L, S, alignment):
    q, k, v = make_inputs(L=L, S=S, dtype=dtype, seed=2)
    check_features(q, k, v, is_causal=True, enable_gqa=True, causal_alignment=alignment)


def test_top_left_alignment_is_pytorchs_is_causal():
    # The default alignment is PyTorch's own is_causal, to the last bit of
    # what the explicit mask gives our kernel.
    q, k, v = make_inputs(L=23, S=53, dtype=torch.float64, seed=3)
    band = visible_keys(diagonal_distance(23, 53), is_causal=True)
    torch.testing.assert_close(ours(q, k, v, is_causal=True, enable_gqa=True),
                               ours(q, k, v, attn_mask=band, enable_gqa=True), rtol=1e-13, atol=1e-13)


def test_window_without_bounds_is_no_window():
    q, k, v = make_inputs(L=23, S=41, dtype=torch.float64, seed=4)
    assert torch.equal(ours(q, k, v, enable_gqa=True, window=(-1, -1)), ours(q, k, v, enable_gqa=True))


def test_rows_that_see_no_key_are_zero_in_output_and_gradients():
    # bottom-right window (2, 0) with L > S: the first L - S rows see no key.
    q, k, v = make_inputs(L=9, S=5, dtype=torch.float64, seed=5)
    options = dict(enable_gqa=True, window=(2, 0), causal_alignment="bottom_right")
    check_features(q, k, v, **options)
    out = ours(q, k, v, **options)
    assert (out[:, :, :4] == 0).all() and (out[:, :, 4:] != 0).all()
    (grad_q,) = torch.autograd.grad(out.square().sum(), q)
    assert (grad_q[:, :, :4] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("per", ["head", "batch_and_head"])
@pytest.mark.parametrize("causal,alignment,L,S", [(False, "top_left", 31, 31), (True, "top_left", 31, 47),
                                                  (True, "bottom_right", 31, 47), (True, "bottom_right", 47, 31)],
                         ids=["full", "causal", "causal_bottom_right_L<S", "causal_bottom_right_L>S"])
def test_alibi(dtype, per, causal, alignment, L, S):
    q, k, v = make_inputs(B=2, L=L, S=S, dtype=dtype, seed=6)
    slopes = geometric_slopes(4)
    if per == "batch_and_head":
        slopes = torch.stack([slopes, slopes.flip(0) * 0.5])
    check_features(q, k, v, is_causal=causal, enable_gqa=True, causal_alignment=alignment, alibi_slopes=slopes)


def test_alibi_slopes_over_five_dim_batch():
    # (N, G, Hq) slopes for (N, G, Hq, L, E) inputs fold as the batch dims do.
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 3, 4, 13, 8, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3))
    slopes = torch.rand(2, 3, 4, generator=g, dtype=torch.float64)
    check_features(q, k, v, alibi_slopes=slopes, window=(6, 2))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("extra", ["plain", "float_mask", "alibi", "causal_window_mask"])
def test_softcap(dtype, extra):
    # spread 4: scores of tens, far into tanh's saturation at softcap 5.
    q, k, v = make_inputs(B=2, L=27, S=35, dtype=dtype, seed=8, spread=4.0)
    kwargs = {"softcap": 5.0, "enable_gqa": True}
    mask = None
    if extra in ("float_mask", "causal_window_mask"):
        mask = float_mask(27, 35, dtype)
    if extra == "alibi":
        kwargs["alibi_slopes"] = geometric_slopes(4)
    if extra == "causal_window_mask":
        # attn_mask and is_causal exclude each other; the window carries the band.
        kwargs.update(window=(9, 0), causal_alignment="bottom_right")
    check_features(q, k, v, mask, **kwargs)


def test_softcap_zero_is_no_cap():
    q, k, v = make_inputs(L=9, S=11, dtype=torch.float64, seed=9)
    assert torch.equal(ours(q, k, v, enable_gqa=True, softcap=0.0), ours(q, k, v, enable_gqa=True))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mask_kind", ["float", "bool"])
def test_window_with_attn_mask(dtype, mask_kind):
    q, k, v = make_inputs(B=2, L=33, S=45, dtype=dtype, seed=10)
    mask = float_mask(33, 45, dtype)
    if mask_kind == "bool":
        mask = mask.detach() > -1.0
    check_features(q, k, v, mask, enable_gqa=True, window=(7, 3), causal_alignment="bottom_right")


# Sizes crossing the CPU kernels' 128-row query tiles and 512-column key
# tiles, with bands that leave whole tiles unseen: the tile skipping of
# visible_key_tiles / query_rows_seeing (csrc/cpu/tile_ops.h) decides which
# tiles are computed. Without a mask gradient the backward runs head_pass; with
# one it runs query_pass and key_pass.
TILE_CASES = {
    "L>S_band_top_left_softcap": dict(L=1100, S=700, window=(150, 250), softcap=20.0),
    "L<S_causal_bottom_right": dict(L=700, S=1100, window=(300, -1), is_causal=True, causal_alignment="bottom_right"),
    "L=S_right_only": dict(L=900, S=900, window=(-1, 120)),
    "L<S_band_bottom_right_softcap_alibi": dict(L=640, S=1030, window=(100, 100), causal_alignment="bottom_right",
                                                softcap=15.0, alibi=True),
    "L=S_diagonal_only_causal": dict(L=1030, S=1030, window=(0, 0), is_causal=True),
    "L<S_causal_top_left": dict(L=600, S=1100, window=(256, -1), is_causal=True),
}


@pytest.mark.slow
@pytest.mark.parametrize("mask_grad", [False, True], ids=["head_pass", "query_key_passes"])
@pytest.mark.parametrize("case", list(TILE_CASES))
def test_tile_skipping_across_tile_boundaries(case, mask_grad):
    options = dict(TILE_CASES[case])
    L, S = options.pop("L"), options.pop("S")
    if options.pop("alibi", False):
        options["alibi_slopes"] = geometric_slopes(2)
    q, k, v = make_inputs(Hq=2, H=1, L=L, S=S, E=32, Ev=16, seed=11, spread=3.0 if "softcap" in options else 1.0)
    mask = None
    if mask_grad:
        # attn_mask excludes is_causal: the band of a causal case goes into the window instead.
        if options.pop("is_causal", False):
            options["window"] = (options["window"][0], 0)
        mask = float_mask(L, S, torch.float32, seed=12)
    check_features(q, k, v, mask, enable_gqa=True, **options)


@pytest.mark.slow
def test_tile_skipping_in_bfloat16():
    q, k, v = make_inputs(Hq=2, H=1, L=700, S=1100, E=32, dtype=torch.bfloat16, seed=13)
    check_features(q, k, v, enable_gqa=True, window=(200, 50), causal_alignment="bottom_right")


# id -> (options, whether a float mask takes part)
GRADCHECK_CASES = {
    "window_causal": (dict(is_causal=True, window=(3, -1)), False),
    "alibi_softcap_bottom_right": (dict(is_causal=True, causal_alignment="bottom_right", softcap=2.0,
                                        alibi_slopes=torch.tensor([[0.5, 0.25], [1.0, 0.0]], dtype=torch.float64)),
                                   False),
    "window_softcap_float_mask": (dict(window=(2, 4), causal_alignment="bottom_right", softcap=3.0), True),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(GRADCHECK_CASES))
def test_gradcheck(case):
    options, with_mask = GRADCHECK_CASES[case]
    g = torch.Generator().manual_seed(14)
    q = torch.randn(2, 2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 1, 7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 1, 7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)

    def attention(q, k, v, mask=None):
        return ours(q, k, v, attn_mask=mask, enable_gqa=True, **options)

    assert torch.autograd.gradcheck(attention, (q, k, v, mask) if with_mask else (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_dropout_with_window_matches_reference_with_the_same_mask(dtype):
    options = dict(enable_gqa=True, window=(6, 2), causal_alignment="bottom_right", alibi_slopes=geometric_slopes(4))
    q, k, v = make_inputs(B=2, L=21, S=33, dtype=dtype, seed=15)
    z = dropout_multipliers(q.detach().double(), k.detach().double(), 0.3, seed=16, **options)
    assert (z[z != 0] > 1).all() and (z == 0).any()

    def dropped_ours(*args, **kwargs):
        torch.manual_seed(16)
        return ours(*args, dropout_p=0.3, **kwargs)

    def with_the_same_mask(*args, **kwargs):
        return explicit_attention(*args, dropout_multipliers=z, **kwargs)

    check_features(q, k, v, ours_fn=dropped_ours, pytorch_fn=with_the_same_mask, reference_fn=with_the_same_mask,
                   **options)


def test_dropout_with_window_same_seed_same_result():
    q, k, v = make_inputs(L=40, S=40, seed=18)
    runs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        out = ours(q, k, v, dropout_p=0.4, enable_gqa=True, window=(8, 8))
        runs.append([out, *torch.autograd.grad(out.square().sum(), (q, k, v))])
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not torch.equal(runs[0][0], runs[2][0])


PAST_THE_KEYS_CHILD = """
import torch, torch_selfattn
from helpers.feature_reference import explicit_attention
g = torch.Generator().manual_seed(0)
L, S, E = 53, 23, 16
# key and value: views of longer buffers whose rows past S are NaN, as a
# cache's unused rows may be; no key past S may be read.
k_buffer, v_buffer = (torch.full((1, 2, 64, E), float("nan"), dtype=torch.float64) for _ in range(2))
k_buffer[:, :, :S], v_buffer[:, :, :S] = (torch.randn(1, 2, S, E, generator=g, dtype=torch.float64) for _ in range(2))
k, v = (b[:, :, :S].requires_grad_() for b in (k_buffer, v_buffer))
q = torch.randn(1, 4, L, E, generator=g, dtype=torch.float64, requires_grad=True)
results = []
for fn in (torch_selfattn.scaled_dot_product_attention, explicit_attention):
    out = fn(q, k, v, enable_gqa=True, window=(5, -1))
    results.append([out, *torch.autograd.grad(out.square().sum(), (q, k, v))])
print("max error", max((a - b).abs().max().item() for a, b in zip(*results)))
"""


@pytest.mark.slow
def test_top_left_window_past_the_keys():
    # Rows far below a top-left window see no key at all: their band lies
    # past S and must be empty, not read or written past the keys. In a
    # child process, as a regression would corrupt the heap.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, os.path.dirname(TESTS)]))
    result = subprocess.run([sys.executable, "-c", PAST_THE_KEYS_CHILD], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    error = float(result.stdout.split("max error")[1])
    assert error < 1e-12, result.stdout


def test_top_left_window_with_mask_gradient_keeps_the_blas_quiet(capfd):
    # A top-left band whose right edge leaves key tiles unseen by any row,
    # with a mask gradient (key_pass): query_rows_seeing (csrc/cpu/tile_ops.h)
    # must not hand the key pass row tiles past L.
    q, k, v = make_inputs(Hq=2, H=1, L=100, S=700, seed=19)
    mask = float_mask(100, 700, torch.float32, seed=20)
    out = ours(q, k, v, attn_mask=mask, enable_gqa=True, window=(20, 0))
    torch.autograd.grad(out.square().sum(), (q, k, v, mask))
    captured = capfd.readouterr()
    assert captured.out + captured.err == ""
