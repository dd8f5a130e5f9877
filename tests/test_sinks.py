"""Attention sinks (gpt-oss style): sinks of shape (Hq,) join every row's
softmax denominator with no value. Against the float64 reference with the
sinks as an explicit extra column of the scores
(helpers/feature_reference.explicit_attention), with gradients for q, k, v,
the mask and the sinks, and the dtype rule of helpers/reference.py; with
windows, causal masks, GQA, masks, softcap and dropout; in
scaled_dot_product_attention, varlen_attention and kv_cache_attention;
gradcheck, torch.compile, opcheck and bad input."""
import pytest
import torch

import torch_selfattn
from helpers.feature_reference import each_cached_sequence, explicit_attention, with_dropout
from helpers.packed import Packed
from helpers.reference import as_float64, assert_within_dtype_rule, poisoned_outputs

ops = torch.ops.selfattn
sdpa = torch_selfattn.scaled_dot_product_attention
NAMES = ["output", "grad_query", "grad_key", "grad_value", "grad_sinks", "grad_attn_mask"]


def rand(*shape, dtype=torch.float32, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)


def results(fn, leaves, grad_out, **kwargs):
    """fn(q, k, v, sinks=..., attn_mask=...) from leaves (q, k, v, sinks[,
    mask]), and the gradient of every leaf for the output gradient."""
    if len(leaves) > 4:
        kwargs["attn_mask"] = leaves[4]
    out = fn(*leaves[:3], sinks=leaves[3], **kwargs)
    return [out, *torch.autograd.grad(out, leaves, grad_out, allow_unused=True, materialize_grads=True)]


def check_sinks(leaves, ours_fn=sdpa, reference_fn=explicit_attention, **kwargs):
    """Ours against the float64 explicit-column reference, within 2x of the
    error of the explicit column in the inputs' dtype. Returns ours."""
    with torch.no_grad():
        shape = reference_fn(*leaves[:3], sinks=leaves[3], **kwargs).shape
    grad_out = rand(*shape, seed=1, requires_grad=False)
    with poisoned_outputs():
        got = results(ours_fn, leaves, grad_out.to(leaves[0].dtype), **kwargs)
    in_dtype = results(reference_fn, leaves, grad_out.to(leaves[0].dtype), **kwargs)
    kwargs64 = {name: as_float64(a) if isinstance(a, torch.Tensor) else a for name, a in kwargs.items()}
    expected = results(reference_fn, [as_float64(t) for t in leaves], grad_out.double(), **kwargs64)
    for name, a, b, c in zip(NAMES, got, in_dtype, expected):
        assert_within_dtype_rule(name, a, b, c)
    return got


CASES = {
    "plain": {},
    "causal": dict(is_causal=True),
    "gqa_window": dict(enable_gqa=True, window=(30, 10)),
    "bottom_right_causal_alibi": dict(is_causal=True, causal_alignment="bottom_right",
                                      alibi_slopes=torch.tensor([0.5, 0.25, 0.125, 0.0625])),
    "softcap": dict(softcap=4.0),
    "float_mask": dict(mask="float"),
    "bool_mask_with_blind_rows": dict(mask="bool"),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("case", CASES)
def test_sinks_match_an_explicit_column(case, dtype):
    options = dict(CASES[case])
    mask_kind = options.pop("mask", None)
    Hq, H = 4, (2 if options.get("enable_gqa") else 4)
    # Sinks that take a tenth of the weight or so: they matter but do not dominate.
    sinks = (rand(Hq, dtype=dtype, seed=5, requires_grad=False) + 3).requires_grad_()
    leaves = [rand(2, Hq, 37, 16, dtype=dtype), rand(2, H, 150, 16, dtype=dtype, seed=3),
              rand(2, H, 150, 12, dtype=dtype, seed=4), sinks]
    if mask_kind == "float":
        leaves.append(rand(1, Hq, 37, 150, dtype=dtype, seed=6))
    elif mask_kind == "bool":
        keep = torch.rand(2, 1, 37, 150, generator=torch.Generator().manual_seed(7)) > 0.3
        keep[:, :, 5] = False  # a row that sees no key: only its sink, so output 0
        options["attn_mask"] = keep
    got = check_sinks(leaves, **options)
    if mask_kind == "bool":
        assert (got[0][:, :, 5] == 0).all()


def test_sinks_are_float32_for_low_precision_inputs():
    """gpt-oss keeps its sinks in float32 beside bfloat16 activations; the
    sinks' gradient comes back in their own dtype."""
    leaves = [rand(1, 4, 20, 16, dtype=torch.bfloat16), rand(1, 4, 30, 16, dtype=torch.bfloat16, seed=1),
              rand(1, 4, 30, 16, dtype=torch.bfloat16, seed=2), rand(4, seed=3)]
    got = check_sinks(leaves, is_causal=True)
    assert got[0].dtype == torch.bfloat16 and got[4].dtype == torch.float32


def test_sinks_with_dropout():
    """Dropout acts on the weights after the sink's share is taken out, as in
    Hugging Face's gpt-oss eager attention."""
    seed, p = 11, 0.25
    leaves = [rand(2, 4, 33, 16), rand(2, 4, 70, 16, seed=3), rand(2, 4, 70, 8, seed=4), rand(4, seed=5)]
    dropped_ours, dropped_reference = with_dropout(leaves[0], leaves[1], p, seed)
    check_sinks(leaves, ours_fn=dropped_ours, reference_fn=dropped_reference)


def test_varlen_sinks_match_each_sequence():
    batch = Packed([0, 1, 130, 3], [5, 0, 200, 9], Hq=4, H=2, dtype=torch.float64)
    check_sinks([batch.q, batch.k, batch.v, rand(4, dtype=torch.float64, seed=9)], ours_fn=batch.varlen,
                reference_fn=batch.one_by_one(explicit_attention), is_causal=True)


def test_kv_cache_sinks_match_each_sequence():
    used = [3, 40, 1]
    seqlens = torch.tensor(used, dtype=torch.int32)
    leaves = [rand(3, 4, 2, 16, dtype=torch.float64), rand(3, 2, 48, 16, seed=1, dtype=torch.float64),
              rand(3, 2, 48, 8, seed=2, dtype=torch.float64), rand(4, seed=3, dtype=torch.float64)]

    def ours(q, k, v, **kwargs):
        return torch_selfattn.kv_cache_attention(q, k, v, seqlens, **kwargs)

    check_sinks(leaves, ours_fn=ours, reference_fn=each_cached_sequence(explicit_attention, used))


def test_sinks_logsumexp_includes_the_sink():
    q, k, v, sinks = rand(1, 2, 5, 8), rand(1, 2, 7, 8, seed=1), rand(1, 2, 7, 8, seed=2), rand(2, seed=3)
    _, lse = sdpa(q, k, v, sinks=sinks, return_lse=True)
    _, expected = explicit_attention(*(as_float64(t) for t in (q, k, v)), sinks=as_float64(sinks), return_lse=True)
    torch.testing.assert_close(lse.double(), expected, atol=1e-6, rtol=1e-6)


def test_gradcheck():
    q, k, v = rand(1, 4, 6, 8, dtype=torch.float64), rand(1, 2, 9, 8, seed=1, dtype=torch.float64), \
        rand(1, 2, 9, 5, seed=2, dtype=torch.float64)
    sinks, mask = rand(4, seed=3, dtype=torch.float64), rand(1, 1, 6, 9, seed=4, dtype=torch.float64)

    def fn(q, k, v, sinks, mask):
        return sdpa(q, k, v, attn_mask=mask, enable_gqa=True, sinks=sinks, return_lse=True)

    assert torch.autograd.gradcheck(fn, (q, k, v, sinks, mask))
    assert torch.autograd.gradgradcheck(fn, (q, k, v, sinks, mask))


def test_compile_matches_eager():
    q, k, v, sinks = rand(2, 4, 20, 16), rand(2, 2, 33, 16, seed=1), rand(2, 2, 33, 16, seed=2), rand(4, seed=3)

    def loss(q, k, v, sinks):
        return sdpa(q, k, v, is_causal=True, enable_gqa=True, sinks=sinks).square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    eager_grads = torch.autograd.grad(loss(q, k, v, sinks), (q, k, v, sinks))
    compiled_grads = torch.autograd.grad(compiled(q, k, v, sinks), (q, k, v, sinks))
    for a, b in zip(eager_grads, compiled_grads):
        torch.testing.assert_close(a, b)


def test_opcheck():
    q, k, v, sinks = rand(2, 4, 9, 8), rand(2, 4, 12, 8, seed=1), rand(2, 4, 12, 8, seed=2), rand(4, seed=3)
    torch.library.opcheck(ops.scaled_dot_product_attention.default, (q, k, v), dict(sinks=sinks))
    torch.library.opcheck(ops.kv_cache_attention.with_lse, (q, k, v, torch.tensor([12, 5], dtype=torch.int32)),
                          dict(sinks=sinks))


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(3), r"sinks must have shape \(Hq,\) = \(4,\)"),
    (torch.zeros(1, 4), r"sinks must have shape \(Hq,\) = \(4,\)"),
    (torch.zeros(4, dtype=torch.int64), "sinks must be a floating-point tensor"),
    (torch.zeros(4, device="meta"), "sinks must be on query's device"),
])
def test_bad_sinks_name_the_argument(bad, message):
    q = rand(2, 4, 9, 8)
    for call in (lambda: sdpa(q, q, q, sinks=bad),
                 lambda: torch_selfattn.kv_cache_attention(q, q, q, torch.tensor([9, 3]), sinks=bad)):
        with pytest.raises(RuntimeError, match=message):
            call()
