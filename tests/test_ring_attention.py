"""Ring attention (torch_selfattn.distributed) on 1, 2 and 4 processes over
gloo, against attention on the full sequence in one process.

The ranks of each world size start once and run every case (tests/helpers/ring_ranks.py);
the tests here check their results: output and gradients against the float64
reference within the dtype rule (tests/helpers/reference.py), a small model trained
under DDP against the same model trained in one process, and the error for
uneven shards. The pieces the ring is made of (the zig-zag layout, the merge,
the block gradients) are checked in this process, without ranks.
"""
import pytest
import torch
import torch.nn.functional as F

from helpers import ring_ranks
import torch_selfattn
from helpers.reference import assert_within_dtype_rule, pytorch_sdpa, reference, run_attention
from torch_selfattn.distributed import blocks, merge, ring_attention, zigzag_shard, zigzag_unshard
from torch_selfattn.distributed.zigzag import block_of

WORLD_SIZES = [1, 2, 4]


@pytest.fixture(scope="module", params=WORLD_SIZES, ids=[f"world{w}" for w in WORLD_SIZES])
def ranks(request, tmp_path_factory):
    world_size = request.param
    return world_size, ring_ranks.run_ranks(world_size, str(tmp_path_factory.mktemp(f"ring{world_size}")))


def result_of(ranks, name):
    _, results = ranks
    status, value = results[name]
    assert status == "ok", f"the ranks failed on {name}:\n{value}"
    return value


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(ring_ranks.CASES))
def test_matches_full_sequence_attention(ranks, case):
    got = result_of(ranks, case)
    (query, key, value, grad_out), kwargs = ring_ranks.case_inputs(case)
    leaves = [t.clone().requires_grad_() for t in (query, key, value)]
    pytorch = run_attention(pytorch_sdpa, *leaves, None, grad_out, **kwargs)
    expected = reference(*leaves, None, grad_out, **kwargs)
    for name, a, b, c in zip(["output", "grad_query", "grad_key", "grad_value"], got, pytorch, expected):
        assert_within_dtype_rule(name, a, b, c)


@pytest.mark.slow
def test_ddp_training_matches_one_process(ranks):
    got = result_of(ranks, "ddp_training")

    def attend(q, k, v):
        return torch_selfattn.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    torch.manual_seed(0)
    model = ring_ranks.TinyLM(attend)
    losses = ring_ranks.train(model, lambda t: t)
    torch.testing.assert_close(got["losses"], torch.stack(losses), rtol=1e-5, atol=1e-6)
    # The parameters moved, and moved alike.
    torch.manual_seed(0)
    initial = dict(ring_ranks.TinyLM(attend).named_parameters())
    for name, param in model.named_parameters():
        assert not torch.equal(param, initial[name]), f"{name} did not train"
        torch.testing.assert_close(got["params"][name], param.detach(), rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_uneven_shards_raise_on_every_rank(ranks):
    world_size, _ = ranks
    errors = result_of(ranks, "uneven_shards")
    if world_size == 1:
        assert errors == [None]  # one rank is always even
        return
    for rank, message in enumerate(errors):
        assert message is not None, f"rank {rank} did not raise"
        assert "every rank must pass shards of the same shape" in message
        assert "query [1, 2, 8, 4]" in message or "query [1, 2, 6, 4]" in message


# ---- without ranks -------------------------------------------------------------------

def test_zigzag_layout():
    full = torch.arange(2 * 3 * 16).view(2, 3, 16)  # chunks of 2 along dim -1 for 4 ranks
    shards = [zigzag_shard(full, rank, 4, dim=-1) for rank in range(4)]
    assert shards[1][0, 0].tolist() == [2, 3, 12, 13]  # chunks 1 and 6 of 8
    assert shards[3][0, 0].tolist() == [6, 7, 8, 9]  # chunks 3 and 4: the middle
    assert torch.equal(zigzag_unshard(shards, dim=-1), full)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_causal_blocks_cover_the_causal_mask_once(world_size):
    """The blocks every rank computes, put back where they sit in the
    full sequence, make up the causal mask, each position once."""
    local_len = 4
    length = world_size * local_len
    positions = [zigzag_shard(torch.arange(length), r, world_size, dim=0) for r in range(world_size)]
    covered = torch.zeros(length, length, dtype=torch.int64)
    work = []
    for rank in range(world_size):
        rank_work = 0
        for source in range(world_size):
            block = block_of(rank, source, local_len, is_causal=True)
            rows, cols = positions[rank][block.rows], positions[source][block.cols]
            seen = torch.ones(len(rows), len(cols), dtype=torch.int64)
            if block.causal:
                seen = seen.tril()
            covered[rows.unsqueeze(1), cols] += seen
            rank_work += len(rows) * len(cols) / (2 if block.causal else 1)
        work.append(rank_work)
    assert torch.equal(covered, torch.ones(length, length, dtype=torch.int64).tril())
    assert len(set(work)) == 1, f"unbalanced work per rank: {work}"


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_merged_blocks_and_their_gradients(is_causal):
    """Attention over keys split in two blocks, merged by logsumexp, has the
    forward and gradients of attention over all keys (float64, exact up to
    rounding). With a causal mask the first block is the causal diagonal and
    the second one is the keys before it."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 16, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 2, 32, 8, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 2, 32, 6, generator=g, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(2, 4, 16, 6, generator=g, dtype=torch.float64)
    scale = 0.4
    parts = [(slice(16, 32), is_causal), (slice(0, 16), False)]  # (key columns, causal)
    if is_causal:  # the query rows are the keys' 16..31
        mask = torch.ones(16, 32, dtype=torch.bool).tril(16)
        expected_out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    else:
        expected_out = F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)
    expected = torch.autograd.grad(expected_out, (q, k, v), grad_out)

    with torch.no_grad():
        outs = [blocks.block_forward(q, k[:, :, c], v[:, :, c], causal, scale) for c, causal in parts]
        out, lse = outs[0][0].clone(), outs[0][1].clone()
        merge.merge_into(out, lse, *outs[1])
        out_dot_grad = merge.row_dot(grad_out, out, torch.float64)
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for cols, causal in parts:
            block = blocks.block_backward(q, k[:, :, cols], v[:, :, cols], causal, scale,
                                          lambda o, l: merge.part_gradients(grad_out, out_dot_grad, lse, o, l))
            dq += block[0]
            dk[:, :, cols] += block[1]
            dv[:, :, cols] += block[2]
    torch.testing.assert_close(out, expected_out, rtol=0, atol=1e-12)
    for name, got, want in zip(["dq", "dk", "dv"], (dq, dk, dv), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12, msg=name)


def qkv(*shape):
    return (torch.randn(*shape) for _ in range(3))


@pytest.mark.parametrize("kwargs, message", [
    (dict(dropout_p=0.1), r"dropout_p must be 0 \(ring attention is dropout-free\), got 0.1"),
    (dict(attn_mask=torch.ones(4, 4, dtype=torch.bool)), r"attn_mask is not supported"),
    (dict(is_causal=True, shape=(1, 2, 5, 4)), r"with is_causal=True the local length must be even"),
    (dict(shape=(2, 5, 4)), r"query must be 4-D \(batch, heads, local length, dim\), got shape \[2, 5, 4\]"),
    (dict(shape=(1, 2, 0, 4)), r"the local length must be positive"),
    (dict(key_heads=1), r"key's head count \(1\) must be equal to \(or, with enable_gqa=True, a divisor of\) "
                        r"query's \(2\)"),
    (dict(key_heads=3, enable_gqa=True), r"key's head count \(3\) must be a divisor of query's \(2\)"),
    (dict(key_len=6), r"key must be \(batch, heads, local length, dim\) with query's batch, local length"),
    (dict(dtype=torch.int64), r"query must be float16, bfloat16, float32 or float64, got torch.int64"),
    (dict(), r"torch.distributed is not initialised"),
])
def test_bad_input(kwargs, message):
    kwargs = dict(kwargs)
    shape = kwargs.pop("shape", (1, 2, 4, 4))
    q, k, v = qkv(*shape)
    if "key_heads" in kwargs or "key_len" in kwargs:
        heads, length = kwargs.pop("key_heads", shape[1]), kwargs.pop("key_len", shape[2])
        k, v = torch.randn(1, heads, length, 4), torch.randn(1, heads, length, 4)
    if "dtype" in kwargs:
        dtype = kwargs.pop("dtype")
        q, k, v = (t.to(dtype) for t in (q, k, v))
    expected = RuntimeError if "not initialised" in message else ValueError
    with pytest.raises(expected, match=message):
        ring_attention(q, k, v, **kwargs)
