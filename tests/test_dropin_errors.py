"""Error parity with PyTorch's SDPA (issue 21): for each invalid input, ours
raises the exception type PyTorch raises, and our message contains PyTorch's
whole message (ours adds the op's name and what it expected).

Each row is run through PyTorch first, so the table tracks PyTorch's own
behaviour: a row whose input PyTorch stops rejecting, or whose wording
changes, fails here. Rows marked "type" compare the exception type only:
there PyTorch's message comes from an op deep inside its implementation
(a matmul's or softmax kernel's), naming that op rather than the argument."""
import re

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import torch_selfattn


def r(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape) + len(shape)), dtype=dtype).to(device)


def qkv(L=4, S=6, E=8, batch=(2, 3)):
    return r(*batch, L, E), r(*batch, S, E), r(*batch, S, E)


def args(q=None, k=None, v=None, **kwargs):
    dq, dk, dv = qkv()
    return (dq if q is None else q, dk if k is None else k, dv if v is None else v), kwargs


def f8(t):
    return t.to(torch.float8_e4m3fn)


# name: (make (args, kwargs), "full" or "type", backend PyTorch is run with)
CASES = {
    # dtypes
    "key_float64": (lambda: args(k=r(2, 3, 6, 8, dtype=torch.float64)), "full", None),
    "value_bfloat16": (lambda: args(v=r(2, 3, 6, 8, dtype=torch.bfloat16)), "full", None),
    "query_float16": (lambda: args(q=r(2, 3, 4, 8, dtype=torch.float16)), "full", None),
    # ranks
    "query_1d": (lambda: args(q=r(8)), "full", None),
    "key_1d": (lambda: args(k=r(8)), "full", None),
    "value_1d": (lambda: args(v=r(8)), "full", None),
    "query_0d": (lambda: args(q=torch.tensor(1.0)), "full", None),
    # batch dims that do not broadcast
    "batch_mismatch": (lambda: args(k=r(3, 3, 6, 8), v=r(3, 3, 6, 8)), "full", None),
    "heads_mismatch": (lambda: args(k=r(2, 2, 6, 8), v=r(2, 2, 6, 8)), "full", None),
    "value_batch_mismatch": (lambda: args(v=r(3, 3, 6, 8)), "full", None),
    # grouped-query attention
    "gqa_heads_do_not_divide": (lambda: args(r(2, 4, 4, 8), r(2, 3, 6, 8), r(2, 3, 6, 8), enable_gqa=True),
                                "full", None),
    "gqa_value_heads_do_not_divide": (lambda: args(r(2, 4, 4, 8), r(2, 2, 6, 8), r(2, 3, 6, 8), enable_gqa=True),
                                      "full", None),
    "gqa_2d_inputs": (lambda: args(r(4, 8), r(6, 8), r(6, 8), enable_gqa=True), "full", None),
    # masks
    "mask_keys_mismatch": (lambda: args(attn_mask=torch.zeros(4, 5)), "full", None),
    "bool_mask_rows_mismatch": (lambda: args(attn_mask=torch.ones(3, 6, dtype=torch.bool)), "full", None),
    "mask_heads_mismatch": (lambda: args(attn_mask=torch.zeros(2, 2, 4, 6)), "full", None),
    "mask_more_dims": (lambda: args(attn_mask=torch.zeros(1, 2, 3, 4, 6)), "full", None),
    "mask_int64": (lambda: args(attn_mask=torch.zeros(4, 6, dtype=torch.long)), "full", None),
    "mask_float64": (lambda: args(attn_mask=torch.zeros(4, 6, dtype=torch.float64)), "full", None),
    "mask_float16_for_float32": (lambda: args(attn_mask=torch.zeros(4, 6, dtype=torch.float16)), "full", None),
    "mask_1d": (lambda: args(attn_mask=torch.zeros(6)), "full", None),
    # PyTorch's default CPU path takes a mask with is_causal (see
    # docs/pytorch_parity.md); its math path, and we, refuse it.
    "mask_and_is_causal": (lambda: args(attn_mask=torch.zeros(4, 6), is_causal=True), "full", SDPBackend.MATH),
    # dropout
    "dropout_above_1": (lambda: args(dropout_p=1.5), "full", None),
    "dropout_negative": (lambda: args(dropout_p=-0.1), "type", None),
    "dropout_nan": (lambda: args(dropout_p=float("nan")), "type", None),
    # devices
    "key_on_meta": (lambda: args(k=r(2, 3, 6, 8, device="meta")), "full", None),
    "value_on_meta": (lambda: args(v=r(2, 3, 6, 8, device="meta")), "full", None),
    # what attention is not defined for
    "int64_inputs": (lambda: args(*(t.long() for t in qkv())), "type", None),
    "bool_inputs": (lambda: args(*(t > 0 for t in qkv())), "type", None),
    "complex_inputs": (lambda: args(*(t.to(torch.complex64) for t in qkv())), "type", None),
    "float8_inputs": (lambda: args(*(f8(t) for t in qkv())), "type", None),
    "embedding_dim_mismatch": (lambda: args(k=r(2, 3, 6, 7)), "type", None),
    "sparse_query": (lambda: args(q=qkv()[0].to_sparse()), "type", None),
}


def pytorch_wording(error):
    """PyTorch's message, without the name of the internal op that raised it
    (its math path says "_scaled_dot_product_attention: ...")."""
    return re.sub(r"^_scaled_dot_product_attention\w*: ", "", str(error).split("\n")[0])


def pytorch_error(make, backend):
    positional, kwargs = make()
    with sdpa_kernel(backend) if backend is not None else _nothing():
        with pytest.raises(Exception) as theirs:
            F.scaled_dot_product_attention(*positional, **kwargs)
    return theirs.value


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_the_table_is_large_enough():
    assert sum(mode == "full" for _, mode, _ in CASES.values()) >= 20


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", CASES)
def test_raises_as_pytorch(name):
    make, mode, backend = CASES[name]
    theirs = pytorch_error(make, backend)
    positional, kwargs = make()
    with pytest.raises(Exception) as ours:
        torch_selfattn.scaled_dot_product_attention(*positional, **kwargs)
    assert type(ours.value) is type(theirs), (type(ours.value), type(theirs), str(theirs))
    message = str(ours.value).split("\n")[0]
    assert message.startswith("scaled_dot_product_attention: "), message
    if mode == "full":
        wording = pytorch_wording(theirs)
        assert wording in message, f"PyTorch: {wording!r}\nours:    {message!r}"


def test_the_patch_raises_the_same():
    # Under patch_sdpa() the same calls raise the same errors.
    for name in ("key_float64", "mask_keys_mismatch", "mask_1d", "gqa_heads_do_not_divide"):
        make, _, backend = CASES[name]
        theirs = pytorch_error(make, backend)
        positional, kwargs = make()
        with torch_selfattn.patch_sdpa():
            with pytest.raises(type(theirs)) as ours:
                F.scaled_dot_product_attention(*positional, **kwargs)
        assert pytorch_wording(theirs) in str(ours.value)
