"""varlen_attention: packed batches of sequences of their own lengths, against
each sequence run on its own through the float64 explicit reference of
tests/helpers/feature_reference.py (and, for the dtype rule, through PyTorch's SDPA
with the explicit mask), with gradients, gradcheck, dropout,
torch.compile, opcheck and bad input."""
import pytest
import torch

import torch_selfattn
from helpers.feature_reference import check_features, explicit_attention
from helpers.packed import Packed

ops = torch.ops.selfattn
varlen = torch_selfattn.varlen_attention


# Lengths 0 and 1, and lengths that cross the kernels' 128-row query tiles and
# 512-column key tiles.
SELF = [0, 1, 130, 3, 64]
CROSS_Q, CROSS_K = [0, 1, 130, 40, 3, 64, 9], [5, 0, 200, 600, 3, 20, 9]

OPTIONS = {
    "plain": {},
    "causal": dict(is_causal=True),
    "causal_bottom_right": dict(is_causal=True, causal_alignment="bottom_right"),
    "window": dict(window=(48, 16)),
    "window_bottom_right_causal": dict(window=(100, -1), is_causal=True, causal_alignment="bottom_right"),
    "alibi_per_head": dict(alibi_slopes=torch.tensor([0.5, 0.25, 0.125, 0.0625])),
    "alibi_per_sequence": dict(alibi_slopes=torch.linspace(0.01, 1.0, 28).reshape(7, 4)),
    "softcap_alibi_causal": dict(softcap=4.0, alibi_slopes=torch.tensor([0.5, 0.25, 0.125, 0.0625]), is_causal=True,
                                 causal_alignment="bottom_right"),
    "scale": dict(scale=0.3, window=(-1, 20), causal_alignment="bottom_right"),
}


@pytest.mark.parametrize("lengths", ["self", "cross"])
@pytest.mark.parametrize("case", OPTIONS)
def test_matches_each_sequence_alone(case, lengths):
    options = dict(OPTIONS[case])
    if case == "alibi_per_sequence":
        options["alibi_slopes"] = options["alibi_slopes"][: len(SELF) if lengths == "self" else len(CROSS_Q)]
    batch = Packed(SELF) if lengths == "self" else Packed(CROSS_Q, CROSS_K)
    batch.check(**options)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_other_dtypes(dtype):
    # Across a 512-column key tile in self-attention too.
    Packed([3, 520, 0, 130], dtype=dtype, seed=1).check(is_causal=True, causal_alignment="bottom_right",
                                                         window=(64, -1))


def test_multi_head_attention_without_gqa():
    Packed([7, 0, 40], Hq=3, H=3, seed=2).check(is_causal=True)


def test_rows_without_keys_and_keys_without_rows():
    # A sequence with no keys gives zero output rows with zero gradient; a
    # sequence with no queries gives its keys and values zero gradient. The
    # poisoned outputs of check_features fail any element left unwritten.
    batch = Packed([4, 0, 6], [0, 5, 6], seed=3)
    out, grad_q, grad_k, grad_v = batch.check()
    assert (out[:4] == 0).all() and (grad_q[:4] == 0).all()
    assert (grad_k[:5] == 0).all() and (grad_v[:5] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_few_queries_against_many_keys(dtype):
    # At most 16 queries per sequence and no rule that tells rows apart: all
    # heads of a sequence make one tile (csrc/cpu/paged_decode.h), across key tiles.
    Packed([1, 3, 0, 16], [40, 700, 5, 600], dtype=dtype, seed=5).check()


def test_no_sequences():
    batch = Packed([], seed=4)
    out = batch.varlen(batch.q, batch.k, batch.v)
    assert out.shape == (0, 4, 12)


@pytest.mark.parametrize("options", [dict(is_causal=True, window=(2, -1)),
                                     dict(alibi_slopes=torch.tensor([[0.5, 0.1], [0.2, 0.0], [1.0, 0.3]],
                                                                    dtype=torch.float64)),
                                     dict(causal_alignment="bottom_right", window=(1, 2), softcap=2.0,
                                          alibi_slopes=torch.tensor([0.5, 0.1], dtype=torch.float64))],
                         ids=["causal_window", "alibi_per_sequence", "bottom_right_softcap_alibi"])
def test_gradcheck(options):
    batch = Packed([3, 0, 5], [4, 2, 5], Hq=2, H=1, E=4, Ev=3, dtype=torch.float64, seed=5)
    assert torch.autograd.gradcheck(lambda q, k, v: batch.varlen(q, k, v, **options), (batch.q, batch.k, batch.v))


def dropout_multipliers(batch, p, seed, **kwargs):
    """Z of each sequence for the run with torch.manual_seed(seed), read back
    as tests/test_dropout.py does: with value rows that are the identity within
    each sequence, output row i of a sequence is P[i] ∘ Z[i].
    A list of (1, Hq, L_s, S_s) tensors."""
    q, k = batch.q.detach().double(), batch.k.detach().double()
    eye = torch.zeros(k.shape[0], k.shape[1], batch.max_k, dtype=torch.float64)
    for s, length in enumerate(batch.k_lengths):
        eye[batch.cu_k[s]:batch.cu_k[s + 1]] = torch.eye(length, batch.max_k, dtype=torch.float64)[:, None]
    probs = batch.varlen(q, k, eye, **kwargs)
    torch.manual_seed(seed)
    dropped = batch.varlen(q, k, eye, dropout_p=p, **kwargs)
    z = torch.where(probs > 0, dropped / probs, torch.zeros_like(probs))
    return [z[batch.cu_q[s]:batch.cu_q[s + 1], :, :length].transpose(0, 1)[None]
            for s, length in enumerate(batch.k_lengths)]


def test_dropout_matches_reference_with_the_same_mask():
    batch = Packed([9, 0, 140, 2], [9, 3, 140, 30], seed=6)
    options = dict(is_causal=True, causal_alignment="bottom_right", window=(40, -1))
    z = dropout_multipliers(batch, 0.25, seed=7, **options)
    kept = torch.cat([part.flatten() for part in z])
    assert (kept[kept != 0] > 1).all() and (kept == 0).any()

    def dropped_ours(*args, **kwargs):
        torch.manual_seed(7)
        return batch.varlen(*args, dropout_p=0.25, **kwargs)

    def with_the_same_mask(*args, **kwargs):
        return batch.one_by_one(explicit_attention)(*args, dropout_multipliers=z, **kwargs)

    check_features(batch.q, batch.k, batch.v, ours_fn=dropped_ours, pytorch_fn=with_the_same_mask,
                   reference_fn=with_the_same_mask, **options)


def test_dropout_same_seed_same_result_and_sequences_draw_apart():
    # Two identical sequences in one batch draw different masks (the dropout
    # index of sequence s starts at s·Hq·max_seqlen_q·max_seqlen_k).
    batch = Packed([33, 33], seed=8)
    with torch.no_grad():
        batch.q[33:], batch.k[33:], batch.v[33:] = batch.q[:33], batch.k[:33], batch.v[:33]
    runs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        out = batch.varlen(batch.q, batch.k, batch.v, dropout_p=0.5, window=(8, 8))
        runs.append([out, *torch.autograd.grad(out.square().sum(), (batch.q, batch.k, batch.v))])
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not torch.equal(runs[0][0], runs[2][0])
    assert not torch.equal(runs[0][0][:33], runs[0][0][33:])


@pytest.mark.slow
def test_compile_fullgraph_with_backward():
    torch._dynamo.reset()
    batch = Packed([5, 0, 70, 1], [5, 2, 70, 9], seed=9)

    def attention(q, k, v, cu_q, cu_k):
        out = varlen(q, k, v, cu_q, cu_k, batch.max_q, batch.max_k, is_causal=True, causal_alignment="bottom_right",
                     window=(16, -1), alibi_slopes=torch.tensor([0.5, 0.25, 0.1, 0.05]), softcap=5.0)
        return out * 2 + 1

    compiled = torch.compile(attention, fullgraph=True)
    leaves = (batch.q, batch.k, batch.v)
    results = []
    for fn in (attention, compiled):
        out = fn(*leaves, batch.cu_q, batch.cu_k)
        results.append([out, *torch.autograd.grad(out.square().sum(), leaves)])
    for eager, traced in zip(*results):
        torch.testing.assert_close(traced, eager, rtol=1e-5, atol=1e-5)


def packed_core_arguments(seed=10):
    batch = Packed([5, 0, 130, 2], [7, 3, 130, 2], seed=seed)
    heads_first = [t.detach().transpose(0, 1)[None].requires_grad_() for t in (batch.q, batch.k, batch.v)]
    options = dict(cu_seqlens_q=batch.cu_q, cu_seqlens_k=batch.cu_k, max_seqlen_q=batch.max_q,
                   max_seqlen_k=batch.max_k, window_left=20, bottom_right=True, softcap=3.0,
                   alibi_slopes=torch.rand(4, 4, generator=torch.Generator().manual_seed(seed)))
    return (*heads_first, None, 0.0, True, 0.25), options


def test_opcheck_attention_forward_with_cu_seqlens():
    args, options = packed_core_arguments()
    torch.library.opcheck(ops.attention_forward.default, args, options)


def test_opcheck_varlen_attention():
    batch = Packed([5, 0, 130, 2], [7, 3, 130, 2], seed=11)
    torch.library.opcheck(ops.varlen_attention.default,
                          (batch.q, batch.k, batch.v, batch.cu_q, batch.cu_k, batch.max_q, batch.max_k),
                          dict(is_causal=True, window=[30, -1], causal_alignment="bottom_right"))


V = "varlen_attention: "
FWD = "attention_forward: "


def bad_offsets(batch, name, values, max_seqlen=None):
    """The batch's varlen call with cu_seqlens `name` ("q" or "k") replaced,
    and its bound too when given."""
    cu = {"q": batch.cu_q, "k": batch.cu_k, name: torch.tensor(values, dtype=torch.int32)}
    bound = {"q": batch.max_q, "k": batch.max_k, name: max_seqlen or {"q": batch.max_q, "k": batch.max_k}[name]}
    return lambda: varlen(batch.q, batch.k, batch.v, cu["q"], cu["k"], bound["q"], bound["k"])


# id -> (call on a Packed([3, 5], [4, 6]) batch, regex of the message)
BAD_INPUT = {
    "cu_seqlens_q_not_from_0": (lambda b: bad_offsets(b, "q", [1, 3, 8]),
                                FWD + r"cu_seqlens_q must run from 0 to the number of packed rows \(8\), got 1 to 8"),
    "cu_seqlens_k_not_to_total": (lambda b: bad_offsets(b, "k", [0, 4, 9]),
                                  FWD + r"cu_seqlens_k must run from 0 to the number of packed rows \(10\), got 0 "
                                  r"to 9"),
    "cu_seqlens_q_decreasing": (lambda b: bad_offsets(b, "q", [0, 9, 8], max_seqlen=20),
                                FWD + r"cu_seqlens_q must not decrease, but entry 2 \(8\) is below entry 1 \(9\)"),
    "cu_seqlens_k_decreasing": (lambda b: bad_offsets(b, "k", [0, 11, 10], max_seqlen=20),
                                FWD + r"cu_seqlens_k must not decrease, but entry 2 \(10\) is below entry 1 \(11\)"),
    "cu_seqlens_lengths_differ": (lambda b: bad_offsets(b, "q", [0, 3, 3, 8]),
                                  FWD + r"cu_seqlens_q and cu_seqlens_k must have one length \(sequences \+ 1 >= 1\), "
                                  r"got 4 and 3"),
    "cu_seqlens_float": (lambda b: lambda: varlen(b.q, b.k, b.v, b.cu_q.float(), b.cu_k, b.max_q, b.max_k),
                         V + r"cu_seqlens_q must be an integer tensor, got Float"),
    "cu_seqlens_rank2": (lambda b: lambda: varlen(b.q, b.k, b.v, b.cu_q, b.cu_k[None], b.max_q, b.max_k),
                         FWD + r"cu_seqlens_k must be a 1-D int32 tensor, got 2-D"),
    "max_seqlen_q_too_small": (lambda b: lambda: varlen(b.q, b.k, b.v, b.cu_q, b.cu_k, 4, b.max_k),
                               FWD + r"sequence 1 has 5 rows, more than max_seqlen_q = 4"),
    "max_seqlen_k_too_small": (lambda b: lambda: varlen(b.q, b.k, b.v, b.cu_q, b.cu_k, b.max_q, 5),
                               FWD + r"sequence 1 has 6 rows, more than max_seqlen_k = 5"),
    "query_rank4": (lambda b: lambda: varlen(b.q[None], b.k, b.v, b.cu_q, b.cu_k, b.max_q, b.max_k),
                    V + r"query must be 3-D \(total_q, Hq, E\), got shape \[1, 8, 4, 16\]"),
    "alibi_wrong_sequences": (lambda b: lambda: varlen(b.q, b.k, b.v, b.cu_q, b.cu_k, b.max_q, b.max_k,
                                                       alibi_slopes=torch.ones(3, 4)),
                              FWD + r"alibi_slopes must have shape \(Hq,\) = \(4,\) or \(sequences, Hq\) = \(2, 4\), "
                              r"got \[3, 4\]"),
    "mask_with_cu_seqlens": (lambda b: lambda: ops.attention_forward(
        *(t.detach().transpose(0, 1)[None] for t in (b.q, b.k, b.v)), torch.zeros(1, 1, 8, 10), 0.0, False, 0.25,
        cu_seqlens_q=b.cu_q, cu_seqlens_k=b.cu_k, max_seqlen_q=b.max_q, max_seqlen_k=b.max_k),
        FWD + r"attn_mask cannot be combined with cu_seqlens"),
    "cu_seqlens_without_max_seqlen": (lambda b: lambda: ops.attention_forward(
        *(t.detach().transpose(0, 1)[None] for t in (b.q, b.k, b.v)), None, 0.0, False, 0.25,
        cu_seqlens_q=b.cu_q, cu_seqlens_k=b.cu_k), FWD + r"max_seqlen_q and max_seqlen_k must be given"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_raises_naming_the_argument(case):
    make_call, pattern = BAD_INPUT[case]
    with pytest.raises(RuntimeError, match=pattern):
        make_call(Packed([3, 5], [4, 6], seed=12))()
