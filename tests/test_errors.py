"""Bad inputs: every class raises, with a message naming the argument, and
PyTorch's own SDPA raises for the same input, so that the two stay in step.

PyTorch is checked on two paths: its default CPU dispatch (which on these
inputs picks the flash kernel) and its math (reference) backend. A few checks
exist on one path only; each case says which path PyTorch raises on.
"""
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import torch_selfattn

ours = torch_selfattn.scaled_dot_product_attention
ops = torch.ops.selfattn
# PyTorch's own function, whatever torch_selfattn.patch_sdpa has done to
# torch.nn.functional.
pytorch_sdpa = torch._C._nn.scaled_dot_product_attention

SDPA = "scaled_dot_product_attention: "


def r(*shape, **kw):
    return torch.randn(*shape, **kw)


def qkv(Hq=2, H=2, L=3, S=5, E=4, Ev=4, **kw):
    return r(1, Hq, L, E, **kw), r(1, H, S, E, **kw), r(1, H, S, Ev, **kw)


def nested(*shapes):
    return torch.nested.nested_tensor([r(*s) for s in shapes])


# id -> (inputs: () -> (args, kwargs), our exception, regex on our message,
#        where PyTorch raises: "both" paths, "math" only or "default" only;
#        "accepts" where PyTorch computes a result on both paths)
CASES = {
    # rank < 2
    "query_rank1": (lambda: ((r(4), r(3, 4), r(3, 4)), {}), RuntimeError,
                    SDPA + r"query must be at least 2-D .* got shape \[4\]", "both"),
    "query_rank0": (lambda: ((r(()), r(3, 4), r(3, 4)), {}), RuntimeError,
                    SDPA + r"query must be at least 2-D .* got shape \[\]", "both"),
    "key_rank1": (lambda: ((r(3, 4), r(4), r(3, 4)), {}), RuntimeError,
                  SDPA + r"key must be at least 2-D", "both"),
    "value_rank1": (lambda: ((r(3, 4), r(3, 4), r(4)), {}), RuntimeError,
                    SDPA + r"value must be at least 2-D", "both"),
    # dtypes of q, k, v
    "key_dtype_mismatch": (lambda: ((r(2, 3, 4), r(2, 3, 4, dtype=torch.float64), r(2, 3, 4)), {}), RuntimeError,
                           SDPA + r"query, key and value must have the same dtype, got query Float, key Double "
                           r"and value Float", "both"),
    "value_dtype_mismatch": (lambda: ((r(2, 3, 4), r(2, 3, 4), r(2, 3, 4, dtype=torch.float16)), {}), RuntimeError,
                             SDPA + r"query, key and value must have the same dtype, got query Float, key Float "
                             r"and value Half", "both"),
    "int64": (lambda: ((torch.ones(2, 3, 4, dtype=torch.int64),) * 3, {}), RuntimeError,
              SDPA + r"query must be float16, bfloat16, float32 or float64, got Long", "both"),
    "int32": (lambda: ((torch.ones(2, 3, 4, dtype=torch.int32),) * 3, {}), RuntimeError,
              SDPA + r"query must be float16, bfloat16, float32 or float64, got Int", "both"),
    "bool": (lambda: ((torch.ones(2, 3, 4, dtype=torch.bool),) * 3, {}), RuntimeError,
             SDPA + r"query must be float16, bfloat16, float32 or float64, got Bool", "both"),
    # A floating-point dtype without a kernel: named by our function, not by the core op below it.
    "float8": (lambda: ((r(2, 3, 4).to(torch.float8_e4m3fn),) * 3, {}), NotImplementedError,
               SDPA + r"query is Float8_e4m3fn; attention is defined for float16, bfloat16, float32 and float64",
               "both"),
    "int_key_only": (lambda: ((r(2, 3, 4), torch.ones(2, 3, 4, dtype=torch.int64), r(2, 3, 4)), {}), RuntimeError,
                     SDPA + r"key must be float16, bfloat16, float32 or float64, got Long", "both"),
    "complex64": (lambda: ((r(2, 3, 4, dtype=torch.complex64),) * 3, {}), NotImplementedError,
                  SDPA + r"query is complex \(ComplexFloat\)", "both"),
    "complex128": (lambda: ((r(2, 3, 4, dtype=torch.complex128),) * 3, {}), NotImplementedError,
                   SDPA + r"query is complex \(ComplexDouble\)", "both"),
    # shapes of q, k, v
    "embedding_dim_mismatch": (lambda: ((r(1, 2, 3, 4), r(1, 2, 5, 6), r(1, 2, 5, 4)), {}), RuntimeError,
                               SDPA + r"key's last dim must equal query's \(the embedding dim E\), got key "
                               r"\[1, 2, 5, 6\] and query \[1, 2, 3, 4\]", "both"),
    # PyTorch's CPU flash kernel does not check this one (it returns a result).
    "key_value_length_mismatch": (lambda: ((r(1, 2, 3, 4), r(1, 2, 5, 4), r(1, 2, 6, 4)), {}), RuntimeError,
                                  SDPA + r"value's dim -2 must equal key's \(the key length S\), got value "
                                  r"\[1, 2, 6, 4\] and key \[1, 2, 5, 4\]", "math"),
    "heads_without_gqa": (lambda: (qkv(Hq=8, H=2), {}), RuntimeError,
                          SDPA + r"the batch dims of query \[1, 8\] and key \[1, 2\] do not broadcast "
                          r"\(for fewer key/value heads than query heads, pass enable_gqa=True\)", "both"),
    "heads_value_without_gqa": (lambda: ((r(1, 4, 3, 4), r(1, 4, 5, 4), r(1, 2, 5, 4)), {}), RuntimeError,
                                SDPA + r"the batch dims of query and key \[1, 4\] and value \[1, 2\] do not "
                                r"broadcast", "both"),
    "batch_mismatch": (lambda: ((r(2, 2, 3, 4), r(3, 2, 5, 4), r(3, 2, 5, 4)), {}), RuntimeError,
                       SDPA + r"the batch dims of query \[2, 2\] and key \[3, 2\] do not broadcast", "both"),
    "gqa_key_heads_not_dividing": (lambda: (qkv(Hq=8, H=3), {"enable_gqa": True}), RuntimeError,
                                   SDPA + r"with enable_gqa, key's head count \(dim -3, 3\) must divide query's "
                                   r"\(8\)", "both"),
    "gqa_value_heads_not_dividing": (lambda: ((r(1, 8, 3, 4), r(1, 2, 5, 4), r(1, 3, 5, 4)), {"enable_gqa": True}),
                                     RuntimeError,
                                     SDPA + r"with enable_gqa, value's head count \(dim -3, 3\) must divide "
                                     r"query's \(8\)", "both"),
    "gqa_query_2d": (lambda: ((r(3, 4), r(5, 4), r(5, 4)), {"enable_gqa": True}), IndexError,
                     SDPA + r"with enable_gqa, query must be at least 3-D \(\.\.\., heads, length, dim\), got shape "
                     r"\[3, 4\]", "both"),
    "gqa_key_2d": (lambda: ((r(2, 3, 4), r(5, 4), r(2, 5, 4)), {"enable_gqa": True}), IndexError,
                   SDPA + r"with enable_gqa, key must be at least 3-D", "both"),
    # attn_mask
    "mask_last_dim": (lambda: (qkv(), {"attn_mask": torch.zeros(3, 4)}), RuntimeError,
                      SDPA + r"attn_mask of shape \[3, 4\] does not broadcast to the attention scores "
                      r"\(\.\.\., Hq, L, S\) = \[1, 2, 3, 5\]", "both"),
    "mask_heads": (lambda: (qkv(), {"attn_mask": torch.zeros(1, 3, 3, 5)}), RuntimeError,
                   SDPA + r"attn_mask of shape \[1, 3, 3, 5\] does not broadcast to the attention scores", "both"),
    "mask_rows": (lambda: (qkv(), {"attn_mask": torch.zeros(2, 5)}), RuntimeError,
                  SDPA + r"attn_mask of shape \[2, 5\] does not broadcast", "both"),
    # The mask is added to Q·Kᵀ in place: value's wider batch dims do not count.
    "mask_wider_than_query_key": (lambda: ((r(1, 3, 4), r(1, 5, 4), r(3, 5, 4)), {"attn_mask": torch.zeros(3, 3, 5)}),
                                  RuntimeError,
                                  SDPA + r"attn_mask of shape \[3, 3, 5\] does not broadcast to the attention scores "
                                  r"\(\.\.\., Hq, L, S\) = \[1, 3, 5\]", "both"),
    "mask_more_dims": (lambda: (qkv(), {"attn_mask": torch.zeros(1, 1, 1, 3, 5)}), RuntimeError,
                       SDPA + r"attn_mask of shape \[1, 1, 1, 3, 5\] has more dims than the attention scores "
                       r"\(\[1, 2, 3, 5\]\)", "both"),
    # PyTorch's math path broadcasts a 1-D mask; its default CPU path raises.
    "mask_1d": (lambda: (qkv(), {"attn_mask": torch.zeros(5)}), IndexError,
                SDPA + r"attn_mask must be at least 2-D \(\.\.\., L, S\), got shape \[5\]", "default"),
    "mask_int64": (lambda: (qkv(), {"attn_mask": torch.zeros(3, 5, dtype=torch.int64)}), RuntimeError,
                   SDPA + r"attn_mask must be bool, float32 or query's dtype \(Float\), got Long", "both"),
    "mask_float64_with_float32": (lambda: (qkv(), {"attn_mask": torch.zeros(3, 5, dtype=torch.float64)}),
                                  RuntimeError,
                                  SDPA + r"attn_mask must be bool, float32 or query's dtype \(Float\), got Double",
                                  "both"),
    "mask_float16_with_float32": (lambda: (qkv(), {"attn_mask": torch.zeros(3, 5, dtype=torch.float16)}),
                                  RuntimeError,
                                  SDPA + r"attn_mask must be bool, float32 or query's dtype \(Float\), got Half",
                                  "both"),
    "mask_bfloat16_with_float64": (lambda: (qkv(dtype=torch.float64),
                                            {"attn_mask": torch.zeros(3, 5, dtype=torch.bfloat16)}), RuntimeError,
                                   SDPA + r"attn_mask must be bool, float32 or query's dtype \(Double\), got "
                                   r"BFloat16", "both"),
    # PyTorch's CPU flash kernel takes both (and ignores the mask); its math path raises.
    "mask_with_is_causal": (lambda: (qkv(), {"attn_mask": torch.zeros(3, 5), "is_causal": True}), RuntimeError,
                            SDPA + r"attn_mask and is_causal=True cannot be given together", "math"),
    "mask_on_other_device": (lambda: (qkv(), {"attn_mask": torch.zeros(3, 5, device="meta")}), RuntimeError,
                             SDPA + r"attn_mask must be on query's device \(cpu\), got meta", "math"),
    "mask_sparse": (lambda: ((r(2, 3, 4), r(2, 5, 4), r(2, 5, 4)), {"attn_mask": torch.zeros(3, 5).to_sparse()}),
                    RuntimeError, SDPA + r"attn_mask must be a dense \(strided\) tensor", "both"),
    "mask_nested": (lambda: ((r(2, 3, 4), r(2, 5, 4), r(2, 5, 4)), {"attn_mask": nested((3, 5), (3, 5))}),
                    RuntimeError, SDPA + r"attn_mask must be a dense \(strided\) tensor", "both"),
    # dropout
    "dropout_above_one": (lambda: (qkv(), {"dropout_p": 1.5}), RuntimeError,
                          SDPA + r"dropout_p must be a probability in \[0, 1\], got 1.5", "both"),
    # PyTorch's math path takes p < 0 (and NaN) as no dropout; its default
    # path and F.dropout raise, and so do we: a negative p is a mistake.
    "dropout_negative": (lambda: (qkv(), {"dropout_p": -0.1}), RuntimeError,
                         SDPA + r"dropout_p must be a probability in \[0, 1\], got -0.1", "default"),
    "dropout_nan": (lambda: (qkv(), {"dropout_p": float("nan")}), RuntimeError,
                    SDPA + r"dropout_p must be a probability in \[0, 1\], got nan", "default"),
    # devices
    "key_on_meta": (lambda: ((r(1, 2, 3, 4), r(1, 2, 5, 4, device="meta"), r(1, 2, 5, 4)), {}), RuntimeError,
                    SDPA + r"query, key and value must be on the same device, got query on cpu, key on meta and "
                    r"value on cpu", "both"),
    "query_on_meta": (lambda: ((r(1, 2, 3, 4, device="meta"), r(1, 2, 5, 4), r(1, 2, 5, 4)), {}), RuntimeError,
                      SDPA + r"query, key and value must be on the same device, got query on meta, key on cpu", "both"),
    # layouts. PyTorch computes nested inputs (patch_sdpa sends them to it);
    # torch_selfattn's own function raises.
    "query_sparse": (lambda: ((r(2, 3, 4).to_sparse(), r(2, 5, 4), r(2, 5, 4)), {}), RuntimeError,
                     SDPA + r"query must be a dense \(strided\) tensor, got layout Sparse", "both"),
    "key_sparse": (lambda: ((r(2, 3, 4), r(2, 5, 4).to_sparse(), r(2, 5, 4)), {}), RuntimeError,
                   SDPA + r"key must be a dense \(strided\) tensor, got layout Sparse", "both"),
    "query_nested": (lambda: ((nested((2, 3, 4), (2, 5, 4)), nested((2, 3, 4), (2, 5, 4)),
                               nested((2, 3, 4), (2, 5, 4))), {}), RuntimeError,
                     SDPA + r"query is a nested tensor, which torch_selfattn does not take", "accepts"),
}


def call_pytorch(path, args, kwargs):
    if path == "math":
        with sdpa_kernel([SDPBackend.MATH]):
            return pytorch_sdpa(*args, **kwargs)
    return pytorch_sdpa(*args, **kwargs)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_raises_naming_the_argument(case):
    make, exc, pattern, _ = CASES[case]
    args, kwargs = make()
    with pytest.raises(exc, match=pattern) as info:
        ours(*args, **kwargs)
    assert type(info.value) is exc  # not a subclass that happens to match


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("case", list(CASES))
def test_pytorch_raises_for_the_same_input(case):
    make, exc, _, where = CASES[case]
    args, kwargs = make()
    paths = {"both": ["default", "math"], "math": ["math"], "default": ["default"], "accepts": []}[where]
    for path in ["default", "math"] if where == "accepts" else []:
        assert call_pytorch(path, args, kwargs) is not None
    for path in paths:
        expected = NotImplementedError if exc is NotImplementedError else (RuntimeError, IndexError, ValueError)
        with pytest.raises(expected):
            call_pytorch(path, args, kwargs)


@pytest.mark.parametrize("case", ["query_rank1", "key_dtype_mismatch", "int64", "embedding_dim_mismatch",
                                  "mask_last_dim", "mask_float64_with_float32", "dropout_above_one"])
def test_bad_input_raises_through_the_dispatcher_op_too(case):
    # The registered op itself, not only the Python wrapper, checks.
    make, exc, pattern, _ = CASES[case]
    args, kwargs = make()
    with pytest.raises(exc, match=pattern):
        ops.scaled_dot_product_attention(*args, **kwargs)


def test_bad_input_raises_under_autograd_and_leaves_no_graph_behind():
    q, k, v = (t.requires_grad_() for t in qkv(Hq=8, H=3))
    with pytest.raises(RuntimeError, match=SDPA + "with enable_gqa, key's head count"):
        ours(q, k, v, enable_gqa=True)
    # The same tensors still work with good arguments.
    out = ours(q, k[:, :1], v[:, :1], enable_gqa=True)
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


# ---------------------------------------------------------------------------
# The core ops.

def core_inputs(device="cpu", B=2, Hq=4, H=2, L=5, S=7, E=8, Ev=6):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, Hq, L, E, generator=g)
    k = torch.randn(B, H, S, E, generator=g)
    v = torch.randn(B, H, S, Ev, generator=g)
    return q.to(device), k.to(device), v.to(device)


FWD = "attention_forward: "
BWD = "attention_backward: "

# id -> (q, k, v, mask, dropout_p, is_causal) transform, regex
CORE_FORWARD_CASES = {
    "query_rank3": (lambda q, k, v: (q[0], k, v, None, 0.0, False),
                    FWD + r"query must be 4-D \(batch, heads, length, dim\), got 3-D"),
    "key_rank3": (lambda q, k, v: (q, k[0], v, None, 0.0, False), FWD + r"key must be 4-D .* got 3-D"),
    "value_rank5": (lambda q, k, v: (q, k, v[None], None, 0.0, False), FWD + r"value must be 4-D .* got 5-D"),
    "batch_mismatch": (lambda q, k, v: (q, k[:1], v[:1], None, 0.0, False),
                       FWD + r"query, key and value must have one batch size, got 2, 1 and 1"),
    "key_value_heads": (lambda q, k, v: (q, k, v[:, :1], None, 0.0, False),
                        FWD + r"key and value must have one head count, got 2 and 1"),
    "heads_not_dividing": (lambda q, k, v: (q[:, :3], k, v, None, 0.0, False),
                           FWD + r"key's head count \(2\) must divide query's \(3\)"),
    "zero_kv_heads": (lambda q, k, v: (q, k[:, :0], v[:, :0], None, 0.0, False),
                      FWD + r"key's head count \(0\) must divide query's \(4\)"),
    "embedding_dim": (lambda q, k, v: (q, k[..., :7], v, None, 0.0, False),
                      FWD + r"key's last dim must equal query's \(E\), got 7 and 8"),
    "key_length": (lambda q, k, v: (q, k, v[:, :, :6], None, 0.0, False),
                   FWD + r"value's length must equal key's \(S\), got 6 and 7"),
    "dtype": (lambda q, k, v: (q, k.double(), v, None, 0.0, False),
              FWD + r"query, key and value must have one dtype, got query Float and key Double"),
    "integer": (lambda q, k, v: (q.long(), k.long(), v.long(), None, 0.0, False),
                FWD + r"query must be float16, bfloat16, float32 or float64, got Long"),
    "mask_rank3": (lambda q, k, v: (q, k, v, torch.zeros(4, 5, 7, device=q.device), 0.0, False),
                   FWD + r"attn_mask must be 4-D, got 3-D"),
    "mask_dim3_not_1_or_full": (lambda q, k, v: (q, k, v, torch.zeros(2, 4, 5, 3, device=q.device), 0.0, False),
                                FWD + r"attn_mask dim 3 must be 1 or 7 to broadcast to \(batch, Hq, L, S\), got "
                                r"attn_mask of shape \[2, 4, 5, 3\]"),
    "mask_dim0_not_1_or_full": (lambda q, k, v: (q, k, v, torch.zeros(3, 1, 1, 1, device=q.device), 0.0, False),
                                FWD + r"attn_mask dim 0 must be 1 or 2"),
    "mask_dim1_kv_heads": (lambda q, k, v: (q, k, v, torch.zeros(1, 2, 1, 1, device=q.device), 0.0, False),
                           FWD + r"attn_mask dim 1 must be 1 or 4"),
    "mask_dtype": (lambda q, k, v: (q, k, v, torch.zeros(1, 1, 5, 7, dtype=torch.int64, device=q.device), 0.0,
                                    False),
                   FWD + r"attn_mask must be bool, float32 or query's dtype \(Float\), got Long"),
    "mask_with_causal": (lambda q, k, v: (q, k, v, torch.zeros(1, 1, 5, 7, device=q.device), 0.0, True),
                         FWD + r"attn_mask and is_causal=True cannot be given together"),
    "dropout_above_one": (lambda q, k, v: (q, k, v, None, 1.5, False), FWD + r"dropout_p must be in \[0, 1\], got 1.5"),
    "dropout_negative": (lambda q, k, v: (q, k, v, None, -0.1, False),
                         FWD + r"dropout_p must be in \[0, 1\], got -0.1"),
    "dropout_nan": (lambda q, k, v: (q, k, v, None, float("nan"), False), FWD + r"dropout_p must be in \[0, 1\]"),
}


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("case", list(CORE_FORWARD_CASES))
def test_core_forward_checks(case, device):
    transform, pattern = CORE_FORWARD_CASES[case]
    args = transform(*core_inputs(device))
    with pytest.raises(RuntimeError, match=pattern):
        ops.attention_forward(*args, 0.25)


# Layouts without a kernel, through the autograd kernel (which checks before
# autograd reads the sizes a nested tensor does not have).
CORE_LAYOUT_CASES = {
    "query_nested": (lambda q, k, v: (torch.nested.nested_tensor(list(q)), k, v, None),
                     FWD + r"query is a nested tensor, which the core ops do not take"),
    "mask_nested": (lambda q, k, v: (q, k, v, torch.nested.nested_tensor([torch.zeros(4, 5, 7)] * 2)),
                    FWD + r"attn_mask is a nested tensor, which the core ops do not take"),
    "key_sparse": (lambda q, k, v: (q, k.to_sparse(), v, None),
                   FWD + r"key must be a dense \(strided\) tensor, got Sparse"),
    "mask_sparse": (lambda q, k, v: (q, k, v, torch.zeros(1, 1, 5, 7).to_sparse()),
                    FWD + r"attn_mask must be a dense \(strided\) tensor"),
}


@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("case", list(CORE_LAYOUT_CASES))
def test_core_forward_layouts_without_a_kernel(case, requires_grad):
    transform, pattern = CORE_LAYOUT_CASES[case]
    q, k, v = (t.requires_grad_(requires_grad) for t in core_inputs())
    with pytest.raises(RuntimeError, match=pattern) as info:
        ops.attention_forward(*transform(q, k, v), 0.0, False, 0.25)
    assert type(info.value) is RuntimeError


def test_core_forward_mixed_devices():
    q, k, v = core_inputs()
    with pytest.raises(RuntimeError, match=FWD + r"query, key and value must be on one device, got query on cpu "
                                             r"and key on meta"):
        ops.attention_forward(q, k.to("meta"), v, None, 0.0, False, 0.25)
    with pytest.raises(RuntimeError, match=FWD + r"attn_mask must be on query's device cpu, got meta"):
        ops.attention_forward(q, k, v, torch.zeros(1, 1, 5, 7, device="meta"), 0.0, False, 0.25)


def forward_results(device="cpu", mask=None):
    q, k, v = core_inputs()
    out, lse, rng = ops.attention_forward(q, k, v, mask, 0.0, False, 0.25)
    grad_out = torch.randn_like(out)
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return [to(t) for t in (grad_out, q, k, v, mask, out, lse, rng)]


def int64(*values):
    return torch.tensor(values, dtype=torch.int64)


# id -> transform of the list [grad_out, q, k, v, mask, out, lse, rng], mask_grad, regex
CORE_BACKWARD_CASES = {
    "grad_output_shape": (lambda a: a.__setitem__(0, a[0][:, :, :4]), False,
                          BWD + r"grad_output must have shape .*2.*4.*5.*6.* \(batch, Hq, L, Ev\), got \[2, 4, 4, 6\]"),
    "grad_output_rank": (lambda a: a.__setitem__(0, a[0][0]), False, BWD + r"grad_output must have shape"),
    "grad_output_dtype": (lambda a: a.__setitem__(0, a[0].double()), False,
                          BWD + r"grad_output must have query's dtype and device"),
    "output_shape": (lambda a: a.__setitem__(5, a[5][..., :3]), False,
                     BWD + r"output must have shape .* \(batch, Hq, L, Ev\), got \[2, 4, 5, 3\]"),
    "logsumexp_shape": (lambda a: a.__setitem__(6, a[6][:, :, :4]), False,
                        BWD + r"logsumexp must have shape \(batch, Hq, L\), got \[2, 4, 4\]"),
    "logsumexp_rank": (lambda a: a.__setitem__(6, a[6][..., None]), False,
                       BWD + r"logsumexp must have shape \(batch, Hq, L\), got \[2, 4, 5, 1\]"),
    "logsumexp_dtype": (lambda a: a.__setitem__(6, a[6].double()), False,
                        BWD + r"logsumexp must be a Float tensor, as attention_forward returns it"),
    "rng_state_three_elements": (lambda a: a.__setitem__(7, int64(0, 0, 0)), False,
                                 BWD + r"rng_state must be the 2-element int64 tensor"),
    "rng_state_empty": (lambda a: a.__setitem__(7, int64()), False, BWD + r"rng_state must be the 2-element int64"),
    "rng_state_float": (lambda a: a.__setitem__(7, torch.zeros(2)), False,
                        BWD + r"rng_state must be the 2-element int64 tensor"),
    "mask_grad_with_bool_mask": (lambda a: a.__setitem__(4, torch.ones(1, 1, 5, 7, dtype=torch.bool)), True,
                                 BWD + r"attn_mask_requires_grad is set, so attn_mask must be a floating-point "
                                 r"tensor"),
    "mask_grad_without_mask": (lambda a: None, True, BWD + r"attn_mask_requires_grad is set, so attn_mask must be"),
    "query_rank3": (lambda a: a.__setitem__(1, a[1][0]), False, BWD + r"query must be 4-D"),
    "mask_shape": (lambda a: a.__setitem__(4, torch.zeros(1, 1, 5, 3)), False,
                   BWD + r"attn_mask dim 3 must be 1 or 7"),
}


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("case", list(CORE_BACKWARD_CASES))
def test_core_backward_checks(case, device):
    transform, mask_grad, pattern = CORE_BACKWARD_CASES[case]
    args = forward_results()
    transform(args)
    args = [None if t is None else t.to(device) for t in args]
    with pytest.raises(RuntimeError, match=pattern):
        ops.attention_backward(*args, 0.0, False, 0.25, mask_grad)


@pytest.mark.parametrize("dropout_p", [1.5, -0.5])
def test_core_backward_dropout_outside_unit_interval(dropout_p):
    with pytest.raises(RuntimeError, match=BWD + r"dropout_p must be in \[0, 1\], got " + re.escape(str(dropout_p))):
        ops.attention_backward(*forward_results(), dropout_p, False, 0.25, False)


def test_core_backward_rng_state_must_be_contiguous():
    # The kernels read both elements through the data pointer: an expanded
    # one-element tensor would have them read past its storage.
    args = forward_results()
    args[7] = torch.zeros(1, dtype=torch.int64).expand(2)
    with pytest.raises(RuntimeError, match=BWD + r"rng_state must be the 2-element int64 tensor that "
                                             r"attention_forward returns, contiguous"):
        ops.attention_backward(*args, 0.0, False, 0.25, False)


def test_core_backward_good_arguments_pass():
    # The fixtures above are valid until a case spoils them.
    for device in ["cpu", "meta"]:
        dq, dk, dv, dmask = ops.attention_backward(*forward_results(device), 0.0, False, 0.25, False)
        assert dq.shape == (2, 4, 5, 8) and dk.shape == (2, 2, 7, 8) and dv.shape == (2, 2, 7, 6)
        assert dq.device.type == device


@pytest.mark.parametrize("which", [6, 7], ids=["logsumexp", "rng_state"])
def test_core_backward_saved_tensor_on_another_device(which):
    # grad_output and output are checked for query's device; logsumexp and
    # rng_state must be too. A meta tensor among CPU ones sends the call to the
    # Meta kernel, which would hand back uninitialised CPU tensors as gradients.
    name = {6: "logsumexp", 7: "rng_state"}[which]
    args = forward_results()
    args[which] = args[which].to("meta")
    with pytest.raises(RuntimeError, match=BWD + name):
        ops.attention_backward(*args, 0.0, False, 0.25, False)


# ---------------------------------------------------------------------------
# No bad call may take the process down.

CHILD = textwrap.dedent(
    r"""
    import torch, torch_selfattn
    sdpa = torch_selfattn.scaled_dot_product_attention
    ops = torch.ops.selfattn
    r = torch.randn
    q, k, v = r(2, 4, 5, 8), r(2, 2, 7, 8), r(2, 2, 7, 6)
    out, lse, rng = ops.attention_forward(q, k, v, None, 0.5, False, 0.25)
    go = torch.randn_like(out)
    nt = torch.nested.nested_tensor([r(2, 3, 4), r(2, 5, 4)])
    bad = [
        lambda: sdpa(r(4), r(3, 4), r(3, 4)),
        lambda: sdpa(r(()), r(()), r(())),
        lambda: sdpa(r(3, 4), r(3, 4, dtype=torch.float64), r(3, 4)),
        lambda: sdpa(*(torch.ones(3, 4, dtype=torch.int64),) * 3),
        lambda: sdpa(*(torch.ones(3, 4, dtype=torch.uint8),) * 3),
        lambda: sdpa(*(r(3, 4, dtype=torch.complex64),) * 3),
        lambda: sdpa(r(3, 4), r(5, 6), r(5, 4)),
        lambda: sdpa(r(3, 4), r(5, 4), r(6, 4)),
        lambda: sdpa(r(1, 8, 3, 4), r(1, 2, 5, 4), r(1, 2, 5, 4)),
        lambda: sdpa(r(1, 8, 3, 4), r(1, 3, 5, 4), r(1, 3, 5, 4), enable_gqa=True),
        lambda: sdpa(r(1, 8, 3, 4), r(1, 0, 5, 4), r(1, 0, 5, 4), enable_gqa=True),
        lambda: sdpa(r(3, 4), r(5, 4), r(5, 4), enable_gqa=True),
        lambda: sdpa(r(3, 4), r(5, 4), r(5, 4), attn_mask=torch.zeros(3, 4)),
        lambda: sdpa(r(3, 4), r(5, 4), r(5, 4), attn_mask=torch.zeros(2, 1, 3, 5)),
        lambda: sdpa(r(3, 4), r(5, 4), r(5, 4), attn_mask=torch.zeros(5)),
        lambda: sdpa(r(3, 4), r(5, 4), r(5, 4), attn_mask=torch.zeros(3, 5, dtype=torch.int64)),
        lambda: sdpa(r(3, 4), r(5, 4), r(5, 4), attn_mask=torch.zeros(3, 5, dtype=torch.float64)),
        lambda: sdpa(r(3, 4), r(5, 4), r(5, 4), attn_mask=torch.zeros(3, 5), is_causal=True),
        lambda: sdpa(r(3, 4), r(5, 4), r(5, 4), attn_mask=torch.zeros(3, 5, device="meta")),
        lambda: sdpa(r(3, 4), r(5, 4), r(5, 4), attn_mask=torch.zeros(3, 5).to_sparse()),
        lambda: sdpa(r(3, 4), r(5, 4), r(5, 4), dropout_p=1.5),
        lambda: sdpa(r(3, 4), r(5, 4, device="meta"), r(5, 4)),
        lambda: sdpa(r(2, 3, 4).to_sparse(), r(2, 5, 4), r(2, 5, 4)),
        lambda: sdpa(nt, nt, nt),
        lambda: ops.attention_forward(q[0], k, v, None, 0.0, False, 1.0),
        lambda: ops.attention_forward(q, k[:, :0], v[:, :0], None, 0.0, False, 1.0),
        lambda: ops.attention_forward(q, k, v[:, :, :3], None, 0.0, False, 1.0),
        lambda: ops.attention_forward(q, k, v, torch.zeros(2, 4, 5, 3), 0.0, False, 1.0),
        lambda: ops.attention_forward(q, k, v, torch.zeros(5, 7), 0.0, False, 1.0),
        lambda: ops.attention_forward(q, k, v, None, 2.0, False, 1.0),
        lambda: ops.attention_forward(q, k, v, None, -1.0, False, 1.0),
        lambda: ops.attention_backward(go[:, :, :1], q, k, v, None, out, lse, rng, 0.5, False, 1.0, False),
        lambda: ops.attention_backward(go, q, k, v, None, out[:, :, :1], lse, rng, 0.5, False, 1.0, False),
        lambda: ops.attention_backward(go, q, k, v, None, out, lse[:, :, :1], rng, 0.5, False, 1.0, False),
        lambda: ops.attention_backward(go, q, k, v, None, out, lse.double(), rng, 0.5, False, 1.0, False),
        lambda: ops.attention_backward(go, q, k, v, None, out, lse, rng[:1], 0.5, False, 1.0, False),
        lambda: ops.attention_backward(go, q, k, v, None, out, lse, torch.zeros(0, dtype=torch.int64), 0.5, False,
                                       1.0, False),
        lambda: ops.attention_backward(go, q, k, v, torch.ones(1, 1, 5, 7, dtype=torch.bool), out, lse, rng, 0.0,
                                       False, 1.0, True),
        lambda: ops.attention_backward(go, q, k, v, None, out, lse, rng, 0.5, False, 1.0, True),
        lambda: ops.attention_backward(go, q, k[..., :3], v, None, out, lse, rng, 0.5, False, 1.0, False),
        lambda: sdpa(r(3, 4, requires_grad=True), r(5, 4), r(5, 4)).backward(torch.ones(2, 4)),
    ]
    caught = 0
    for i, call in enumerate(bad):
        try:
            call()
        except (RuntimeError, NotImplementedError, IndexError, ValueError):
            caught += 1
        else:
            print("no exception from call", i)
    print(f"caught {caught} of {len(bad)}")
    """
)
CHILD_CALLS = CHILD.count("lambda: ")


@pytest.mark.slow
def test_bad_calls_do_not_crash_the_process():
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", CHILD], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, (result.returncode, result.stdout[-2000:], result.stderr[-4000:])
    assert f"caught {CHILD_CALLS} of {CHILD_CALLS}" in result.stdout, result.stdout + result.stderr[-2000:]
    assert CHILD_CALLS >= 40
