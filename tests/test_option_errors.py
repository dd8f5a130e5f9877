"""Bad values of the keyword-only extras (window, causal_alignment, softcap,
alibi_slopes) raise, naming the argument and what was expected, from every
function that takes them and from the core op."""
import pytest
import torch

import torch_selfattn

ops = torch.ops.selfattn
SDPA = "scaled_dot_product_attention: "
VARLEN = "varlen_attention: "
CACHE = "kv_cache_attention: "
FWD = "attention_forward: "


def inputs(Hq=2, H=2, L=3, S=5, E=4):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, Hq, L, E, generator=g), torch.randn(1, H, S, E, generator=g),
            torch.randn(1, H, S, E, generator=g))


def sdpa(**options):
    return lambda: torch_selfattn.scaled_dot_product_attention(*inputs(), **options)


def varlen(**options):
    q, k, v = (t[0].transpose(0, 1) for t in inputs())
    cu_q, cu_k = torch.tensor([0, 3], dtype=torch.int32), torch.tensor([0, 5], dtype=torch.int32)
    return lambda: torch_selfattn.varlen_attention(q, k, v, cu_q, cu_k, 3, 5, **options)


def kv_cache(**options):
    return lambda: torch_selfattn.kv_cache_attention(*inputs(), torch.tensor([5]), **options)


def core(**options):
    return lambda: ops.attention_forward(*inputs(), None, 0.0, False, 0.5, **options)


WINDOW = r"window must be \(left, right\), each >= 0 or -1 for no bound, got "
SOFTCAP = r"softcap must be a finite number >= 0 \(0 or None: no cap\), got "
SLOPES_SHAPE = r"alibi_slopes must have shape \(Hq,\) = \(2,\) or "

# id -> (call, regex of the message)
CASES = {
    "window_three_values": (sdpa(window=(1, 2, 3)), SDPA + WINDOW + r"\[1, 2, 3\]"),
    "window_one_value": (sdpa(window=(4,)), SDPA + WINDOW + r"\[4\]"),
    "window_below_minus_one": (sdpa(window=(-2, 0)), SDPA + WINDOW + r"\[-2, 0\]"),
    "varlen_window_below_minus_one": (varlen(window=(0, -3)), VARLEN + WINDOW + r"\[0, -3\]"),
    "kv_cache_window_one_value": (kv_cache(window=(7,)), CACHE + WINDOW + r"\[7\]"),
    "causal_alignment_unknown": (sdpa(causal_alignment="top-left"),
                                 SDPA + r"causal_alignment must be \"top_left\" or \"bottom_right\", got \"top-left\""),
    "varlen_causal_alignment_unknown": (varlen(causal_alignment="bottom"), VARLEN + r"causal_alignment must be "
                                        r"\"top_left\" or \"bottom_right\", got \"bottom\""),
    "softcap_negative": (sdpa(softcap=-1.0), SDPA + SOFTCAP + r"-1"),
    "softcap_inf": (sdpa(softcap=float("inf")), SDPA + SOFTCAP + r"inf"),
    "softcap_nan": (sdpa(softcap=float("nan")), SDPA + SOFTCAP + r"nan"),
    "varlen_softcap_negative": (varlen(softcap=-0.5), VARLEN + SOFTCAP + r"-0.5"),
    "kv_cache_softcap_inf": (kv_cache(softcap=float("inf")), CACHE + SOFTCAP + r"inf"),
    "alibi_wrong_heads": (sdpa(alibi_slopes=torch.ones(3)),
                          SDPA + SLOPES_SHAPE + r"\(\.\.\., Hq\) broadcasting to the batch dims, got \[3\]"),
    "alibi_zero_dim": (sdpa(alibi_slopes=torch.tensor(0.5)), SDPA + SLOPES_SHAPE + r".* got \[\]"),
    "alibi_requires_grad": (sdpa(alibi_slopes=torch.ones(2, requires_grad=True)),
                            SDPA + r"alibi_slopes gets no gradient, but it requires grad; pass "
                            r"alibi_slopes.detach\(\)"),
    "alibi_integer": (sdpa(alibi_slopes=torch.ones(2, dtype=torch.int64)),
                      SDPA + r"alibi_slopes must be a floating-point tensor, got Long"),
    "alibi_other_device": (sdpa(alibi_slopes=torch.ones(2, device="meta")),
                           r"alibi_slopes must be on query's device \(cpu\), got meta"),
    "varlen_alibi_integer": (varlen(alibi_slopes=torch.ones(2, dtype=torch.int32)),
                             VARLEN + r"alibi_slopes must be a floating-point tensor, got Int"),
    "kv_cache_alibi_per_sequence_wrong": (kv_cache(alibi_slopes=torch.ones(2, 2)),
                                          SLOPES_SHAPE + r"\(sequences, Hq\) = \(1, 2\), got \[2, 2\]"),
    "core_window_left": (core(window_left=-2),
                         FWD + r"window_left and window_right must be >= 0, or -1 for no bound, got -2 and -1"),
    "core_window_right": (core(window_right=-5),
                          FWD + r"window_left and window_right must be >= 0, or -1 for no bound, got -1 and -5"),
    "core_softcap": (core(softcap=-0.5), FWD + r"softcap must be a finite number >= 0 \(0: none\), got -0.5"),
    "core_alibi_shape": (core(alibi_slopes=torch.ones(1, 2, 2)),
                         FWD + SLOPES_SHAPE + r"\(sequences, Hq\) = \(1, 2\), got \[1, 2, 2\]"),
    "core_alibi_integer": (core(alibi_slopes=torch.ones(2, dtype=torch.int32)),
                           FWD + r"alibi_slopes must be a floating-point tensor, got Int"),
    "core_cu_seqlens_q_alone": (core(cu_seqlens_q=torch.tensor([0, 3], dtype=torch.int32)),
                                FWD + r"cu_seqlens_q and cu_seqlens_k must be given together"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_option_raises_naming_the_argument(case):
    call, pattern = CASES[case]
    with pytest.raises(RuntimeError, match=pattern):
        call()


def test_core_op_refuses_slopes_that_require_grad_under_autograd():
    q, k, v = (t.requires_grad_() for t in inputs())
    with pytest.raises(RuntimeError, match=FWD + r"alibi_slopes gets no gradient; pass alibi_slopes.detach\(\)"):
        ops.attention_forward(q, k, v, None, 0.0, False, 0.5, alibi_slopes=torch.ones(2, requires_grad=True))


def test_alibi_slopes_batch_dims_that_do_not_broadcast():
    with pytest.raises(RuntimeError, match=SDPA + r"alibi_slopes"):
        sdpa(alibi_slopes=torch.ones(3, 2))()
