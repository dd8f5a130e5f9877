"""return_lse=True: the logsumexp of every row as a second output, and its
gradient. Against torch.logsumexp of the explicit float64 scores
(helpers/feature_reference.explicit_attention), with a loss that uses both
the output and the logsumexp; the dtype rule of helpers/reference.py for
every result, gradcheck and gradgradcheck in float64, forward-mode AD, every
function (sdpa, varlen, kv_cache), dropout, torch.compile, opcheck and bad
input."""
import pytest
import torch

import torch_selfattn
from helpers.feature_reference import each_cached_sequence, explicit_attention, with_dropout
from helpers.packed import Packed
from helpers.reference import as_float64, assert_within_dtype_rule, poisoned_outputs

ops = torch.ops.selfattn
sdpa = torch_selfattn.scaled_dot_product_attention
NAMES = ["output", "logsumexp", "grad_query", "grad_key", "grad_value", "grad_attn_mask"]


def rand(*shape, dtype=torch.float32, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)


def lse_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def results(fn, leaves, grads, **kwargs):
    """(output, logsumexp) of fn(*leaves[:3]) with leaves[3], if any, as the
    mask, then the gradients of every leaf for the loss out·grads[0] + lse·grads[1]."""
    if len(leaves) > 3:
        kwargs["attn_mask"] = leaves[3]
    out, lse = fn(*leaves[:3], return_lse=True, **kwargs)
    return [out, lse, *torch.autograd.grad([out, lse], leaves, grads, allow_unused=True, materialize_grads=True)]


def check_lse_and_gradients(leaves, ours_fn=sdpa, reference_fn=explicit_attention, **kwargs):
    """Ours against the float64 reference, within 2x of the error of the
    same formula in the inputs' dtype (whose logsumexp is compared in ours'
    dtype, float32). Returns ours."""
    q = leaves[0]
    with torch.no_grad():
        out, lse = reference_fn(*leaves[:3], return_lse=True, **kwargs)
    grad_out = rand(*out.shape, seed=1, requires_grad=False)
    grad_lse = rand(*lse.shape, seed=2, requires_grad=False)
    with poisoned_outputs():
        got = results(ours_fn, leaves, [grad_out.to(q.dtype), grad_lse.to(lse_dtype(q.dtype))], **kwargs)
    in_dtype = results(reference_fn, leaves, [grad_out.to(q.dtype), grad_lse.to(q.dtype)], **kwargs)
    in_dtype[1] = in_dtype[1].to(got[1].dtype)
    kwargs64 = {name: as_float64(a) if isinstance(a, torch.Tensor) else a for name, a in kwargs.items()}
    expected = results(reference_fn, [as_float64(t) for t in leaves], [grad_out.double(), grad_lse.double()],
                       **kwargs64)
    # Rows that see no key: −inf in all three, compared as 0 below.
    no_key = expected[1].isneginf()
    assert torch.equal(got[1].isneginf(), no_key) and torch.equal(in_dtype[1].isneginf(), no_key)
    for name, a, b, c in zip(NAMES, got, in_dtype, expected):
        if name == "logsumexp":
            a, b, c = (t.masked_fill(no_key, 0) for t in (a, b, c))
        assert_within_dtype_rule(name, a, b, c)
    return got


CASES = {
    "plain": {},
    "causal": dict(is_causal=True),
    "gqa_bottom_right_window": dict(enable_gqa=True, is_causal=True, causal_alignment="bottom_right",
                                    window=(40, -1)),
    "alibi_softcap": dict(alibi_slopes=torch.tensor([0.5, 0.25, 0.125, 0.0625]), softcap=5.0),
    "float_mask": dict(mask="float"),
    "bool_mask": dict(mask="bool"),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("case", CASES)
def test_logsumexp_and_its_gradient(case, dtype):
    options = dict(CASES[case])
    mask_kind = options.pop("mask", None)
    Hq, H = 4, (2 if options.get("enable_gqa") else 4)
    # 150 keys cross the CPU kernels' key tiles; 37 rows make a ragged query tile.
    leaves = [rand(2, Hq, 37, 16, dtype=dtype), rand(2, H, 150, 16, dtype=dtype, seed=3),
              rand(2, H, 150, 12, dtype=dtype, seed=4)]
    if mask_kind == "float":
        leaves.append(rand(1, Hq, 37, 150, dtype=dtype, seed=5))
    elif mask_kind == "bool":
        keep = torch.rand(2, 1, 37, 150, generator=torch.Generator().manual_seed(6)) > 0.3
        keep[..., 0] = True  # every row sees a key
        options["attn_mask"] = keep
    got = check_lse_and_gradients(leaves, **options)
    assert got[1].shape == (2, Hq, 37) and got[1].dtype == lse_dtype(dtype)


def test_rows_that_see_no_key():
    """A row that sees no key has logsumexp −inf, output 0 and no NaN in
    any gradient, whatever gradient its logsumexp gets."""
    q, k, v = rand(1, 2, 5, 8), rand(1, 2, 7, 8, seed=1), rand(1, 2, 7, 8, seed=2)
    keep = torch.ones(5, 7, dtype=torch.bool)
    keep[2] = False
    out, lse = sdpa(q, k, v, attn_mask=keep, return_lse=True)
    assert torch.isneginf(lse[:, :, 2]).all() and lse[:, :, [0, 1, 3, 4]].isfinite().all()
    assert (out[:, :, 2] == 0).all()
    grads = torch.autograd.grad([out, lse.masked_fill(lse.isinf(), 0)], [q, k, v],
                                [torch.ones_like(out), torch.ones_like(lse)])
    assert all(g.isfinite().all() for g in grads)
    assert (grads[0][:, :, 2] == 0).all()


def test_gradient_with_dropout():
    """The logsumexp is that of the scores before dropout; its gradient adds
    P·dlse to the score gradient, with the same dropped pattern as the output's."""
    seed, p = 7, 0.3
    leaves = [rand(2, 4, 33, 16), rand(2, 4, 70, 16, seed=3), rand(2, 4, 70, 8, seed=4)]
    dropped_ours, dropped_reference = with_dropout(leaves[0], leaves[1], p, seed)
    check_lse_and_gradients(leaves, ours_fn=dropped_ours, reference_fn=dropped_reference)


def test_varlen_logsumexp_matches_each_sequence():
    batch = Packed([0, 1, 130, 3], [5, 0, 200, 9], Hq=4, H=2, dtype=torch.float64)
    got = check_lse_and_gradients([batch.q, batch.k, batch.v], ours_fn=batch.varlen,
                                  reference_fn=batch.one_by_one(explicit_attention), is_causal=True)
    assert got[1].shape == (4, batch.q.shape[0])


def test_kv_cache_logsumexp_matches_each_sequence():
    used = [3, 40, 1]
    q, k, v = rand(3, 4, 2, 16, dtype=torch.float64), rand(3, 2, 48, 16, seed=1, dtype=torch.float64), \
        rand(3, 2, 48, 8, seed=2, dtype=torch.float64)
    seqlens = torch.tensor(used, dtype=torch.int32)

    def ours(q, k, v, **kwargs):
        return torch_selfattn.kv_cache_attention(q, k, v, seqlens, **kwargs)

    got = check_lse_and_gradients([q, k, v], ours_fn=ours, reference_fn=each_cached_sequence(explicit_attention, used))
    assert got[1].shape == (3, 4, 2)


def test_gradcheck_through_the_logsumexp():
    q, k, v = rand(1, 4, 6, 8, dtype=torch.float64), rand(1, 2, 9, 8, seed=1, dtype=torch.float64), \
        rand(1, 2, 9, 5, seed=2, dtype=torch.float64)
    mask = rand(1, 1, 6, 9, seed=3, dtype=torch.float64)

    def fn(q, k, v, mask):
        out, lse = sdpa(q, k, v, attn_mask=mask, enable_gqa=True, return_lse=True)
        return out, lse

    assert torch.autograd.gradcheck(fn, (q, k, v, mask))
    assert torch.autograd.gradgradcheck(fn, (q, k, v, mask))
    assert torch.autograd.gradcheck(lambda q, k, v: sdpa(q, k, v, is_causal=True, enable_gqa=True, return_lse=True)[1],
                                    (q, k, v),
                                    check_forward_ad=True, check_backward_ad=False, check_undefined_grad=False,
                                    check_batched_grad=False)


def test_gradcheck_with_dropout():
    q, k, v = rand(1, 2, 6, 8, dtype=torch.float64), rand(1, 2, 9, 8, seed=1, dtype=torch.float64), \
        rand(1, 2, 9, 5, seed=2, dtype=torch.float64)

    def fn(q, k, v):
        torch.manual_seed(3)
        return sdpa(q, k, v, dropout_p=0.4, return_lse=True)

    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_compile_matches_eager():
    q, k, v = rand(2, 4, 20, 16), rand(2, 2, 33, 16, seed=1), rand(2, 2, 33, 16, seed=2)

    def loss(q, k, v):
        out, lse = sdpa(q, k, v, is_causal=True, enable_gqa=True, return_lse=True)
        return out.square().sum() + lse.sin().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    eager_grads = torch.autograd.grad(loss(q, k, v), (q, k, v))
    compiled_grads = torch.autograd.grad(compiled(q, k, v), (q, k, v))
    for a, b in zip(eager_grads, compiled_grads):
        torch.testing.assert_close(a, b)


def test_opcheck():
    q, k, v = rand(2, 4, 9, 8), rand(2, 2, 12, 8, seed=1), rand(2, 2, 12, 8, seed=2)
    torch.library.opcheck(ops.scaled_dot_product_attention.with_lse, (q, k, v), dict(enable_gqa=True))
    q, k, v = (t.detach() for t in (q, k, v))
    out, lse, rng = ops.attention_forward(q, k, v, None, 0.0, False, 0.3)
    grad_lse = torch.randn_like(lse)
    torch.library.opcheck(ops.attention_backward.default,
                          (torch.randn_like(out), q, k, v, None, out, lse, rng, 0.0, False, 0.3, False, grad_lse))


def test_bad_grad_logsumexp_names_it():
    q, k, v = rand(2, 4, 9, 8), rand(2, 4, 12, 8, seed=1), rand(2, 4, 12, 8, seed=2)
    out, lse, rng = ops.attention_forward(q, k, v, None, 0.0, False, 0.3)
    for bad in (lse[:, :, :3], lse.double()):
        with pytest.raises(RuntimeError, match="grad_logsumexp must be a dense tensor of logsumexp's shape"):
            ops.attention_backward(torch.randn_like(out), q, k, v, None, out, lse, rng, 0.0, False, 0.3, False, bad)


def test_return_lse_must_be_a_bool():
    q = rand(1, 1, 3, 4)
    with pytest.raises(TypeError, match="return_lse"):
        sdpa(q, q, q, return_lse="yes")
