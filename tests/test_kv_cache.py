"""kv_cache_attention: a few new queries per sequence against the first
cache_seqlens[b] rows of a KV cache, bottom-right aligned, against each
sequence run alone through the float64 explicit reference of
tests/helpers/feature_reference.py. The cache rows past cache_seqlens[b] hold NaN, so
an output that reads one shows it.

The CPU kernels split the keys of each (sequence, head) across tasks (split-KV,
csrc/cpu/split_keys_forward.h) when the queries fit one 128-row tile and the
(sequence, head) pairs are fewer than two per thread; the cases below take
both paths, and one compares one thread against all of them."""
import pytest
import torch

import torch_selfattn
from helpers.feature_reference import (check_features, each_cached_sequence, explicit_attention,
                                       pytorch_with_explicit_rules)
from helpers.reference import as_float64, assert_within_dtype_rule, poisoned_outputs

kv_cache_attention = torch_selfattn.kv_cache_attention


class Cache:
    """query (B, Hq, L, E), key_cache and value_cache (B, H, S_max, E/Ev)
    whose rows past cache_seqlens[b] are NaN, cache_seqlens (B,) int32."""

    def __init__(self, cache_seqlens, L, S_max, Hq=4, H=1, E=32, Ev=24, dtype=torch.float32, seed=0,
                 token_major=False):
        g = torch.Generator().manual_seed(seed)
        B = len(cache_seqlens)

        def rand(*shape):
            return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

        self.query = rand(B, Hq, L, E)
        self.key_cache, self.value_cache = rand(B, H, S_max, E), rand(B, H, S_max, Ev)
        for b, used in enumerate(cache_seqlens):
            self.key_cache[b, :, used:] = float("nan")
            self.value_cache[b, :, used:] = float("nan")
        self.cache_seqlens = torch.tensor(cache_seqlens, dtype=torch.int32)
        if token_major:  # FlashAttention's (B, S_max, H, E) layout, seen as (B, H, S_max, E)
            self.key_cache, self.value_cache = (t.transpose(1, 2).contiguous().transpose(1, 2)
                                                for t in (self.key_cache, self.value_cache))

    def ours(self, **kwargs):
        with poisoned_outputs():
            return kv_cache_attention(self.query, self.key_cache, self.value_cache, self.cache_seqlens, **kwargs)

    def check(self, **kwargs):
        """The dtype rule on our output. Returns it."""
        got = self.ours(**kwargs)
        used = self.cache_seqlens.tolist()
        pytorch = each_cached_sequence(pytorch_with_explicit_rules, used)(self.query, self.key_cache,
                                                                          self.value_cache, **kwargs)
        kwargs64 = {**kwargs, "alibi_slopes": as_float64(kwargs.get("alibi_slopes"))}
        expected = each_cached_sequence(explicit_attention, used)(*map(as_float64, (self.query, self.key_cache,
                                                                                    self.value_cache)), **kwargs64)
        assert_within_dtype_rule("output", got, pytorch, expected)
        return got


OPTIONS = {
    "causal": {},
    "not_causal": dict(is_causal=False),
    "window": dict(window=(700, -1)),
    "alibi_per_head": dict(alibi_slopes=torch.tensor([0.05, 0.01, 0.002, 0.0])),
    "alibi_per_sequence_softcap": dict(alibi_slopes=torch.tensor([[0.05, 0.01, 0.002, 0.0], [0.1, 0.2, 0.3, 0.4]]),
                                       softcap=3.0),
    "scale_window_softcap": dict(scale=0.5, window=(40, -1), softcap=2.0),
}


# B = 2, Hq = 4: 8 (sequence, head) pairs, split across 2 or more threads
# only where a thread gets fewer than two (more than 4 threads).
@pytest.mark.parametrize("L", [1, 4, 16])
@pytest.mark.parametrize("case", list(OPTIONS))
def test_decode_step(case, L):
    Cache([8000, 700], L=L, S_max=8192, seed=L).check(**OPTIONS[case])


# A token-major cache, with no rule that differs between query rows, takes
# the all-heads decoding path (csrc/cpu/paged_decode.h).
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case, L", [("causal", 1), ("not_causal", 4), ("window", 1)])
def test_decode_step_token_major(case, L, dtype):
    Cache([8000, 700, 0], L=L, S_max=8192, H=2, dtype=dtype, seed=L, token_major=True).check(**OPTIONS[case])


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_decode_step_other_dtypes(dtype):
    Cache([3000, 2048], L=3, S_max=3072, dtype=dtype, seed=1).check(window=(1000, -1))


# B = 1 with Hq = 1 or 2: fewer pairs than two per thread, so the keys split.
@pytest.mark.parametrize("Hq", [1, 2])
@pytest.mark.parametrize("case", ["causal", "window", "scale_window_softcap"])
def test_split_keys(case, Hq):
    options = dict(OPTIONS[case])
    Cache([5000], L=2, S_max=6000, Hq=Hq, seed=Hq).check(**options)


def test_one_thread_and_all_threads_agree():
    # Two pairs: split in two on 2 or more threads, not split on one.
    cache = Cache([4100], L=1, S_max=4096 + 512, Hq=2, seed=2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = cache.check(window=(3000, -1))
    finally:
        torch.set_num_threads(threads)
    together = cache.check(window=(3000, -1))
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_sequences_with_few_or_no_keys():
    # cache_seqlens 0: no keys, output 0. 5 keys for 8 queries: the first 3
    # (positions before the cache starts) see none under causal masking.
    cache = Cache([0, 5, 2100], L=8, S_max=2200, seed=3)
    out = cache.check()
    assert (out[0] == 0).all() and (out[1, :, :3] == 0).all() and (out[1, :, 3:] != 0).all()


def test_split_keys_forward_gives_the_backward_its_logsumexp():
    # Plain SDPA takes the split-key forward too (one head, 3 rows, many keys);
    # the backward rebuilds the probabilities from the merged logsumexp.
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 1, L, 32, generator=g).requires_grad_() for L in (3, 2600, 2600))
    check_features(q, k, v, is_causal=True, causal_alignment="bottom_right", window=(1500, -1))


CACHE = "kv_cache_attention: "
FWD = "attention_forward: "
# The checks of the values of cache_seqlens run in the core op, which names
# its own argument (seqused_k), not the one the caller passed.
@pytest.mark.parametrize("cache_seqlens, pattern", [
    ([9, 2], r"cache_seqlens\[0\] = 9 .*\[0, 8\]"),
    ([-1, 2], r"cache_seqlens\[0\] = -1"),
    ([1, 2, 3], r"cache_seqlens must have one entry per sequence \(2\), got 3"),
], ids=["longer_than_cache", "negative", "wrong_length"])
def test_bad_cache_seqlens_values(cache_seqlens, pattern):
    cache = Cache([4, 2], L=2, S_max=8)
    with pytest.raises(RuntimeError, match=pattern):
        kv_cache_attention(cache.query, cache.key_cache, cache.value_cache, torch.tensor(cache_seqlens))


def test_bad_seqused_k_is_caught_by_the_core_op():
    # The core op names its own argument and the user-facing one it carries.
    cache = Cache([4, 2], L=2, S_max=8)
    call = (cache.query, cache.key_cache, cache.value_cache, None, 0.0, True, 0.5)
    with pytest.raises(RuntimeError, match=FWD + r"cache_seqlens\[0\] = 9 \(seqused_k\) must be in \[0, 8\]"):
        torch.ops.selfattn.attention_forward(*call, bottom_right=True, seqused_k=torch.tensor([9, 2], dtype=torch.int32))
    with pytest.raises(RuntimeError, match=FWD + r"seqused_k must have one entry per sequence \(2\), got 3"):
        torch.ops.selfattn.attention_forward(*call, seqused_k=torch.tensor([1, 2, 3], dtype=torch.int32))


@pytest.mark.parametrize("make_call, pattern", [
    (lambda c: (c.query, c.key_cache, c.value_cache, c.cache_seqlens.float()),
     CACHE + r"cache_seqlens must be an integer tensor, got Float"),
    (lambda c: (c.query, c.key_cache, c.value_cache, c.cache_seqlens.bool()),
     CACHE + r"cache_seqlens must be an integer tensor, got Bool"),
    (lambda c: (c.query[0], c.key_cache, c.value_cache, c.cache_seqlens),
     CACHE + r"query must be 4-D \(batch, Hq, L, E\), got shape \[4, 2, 32\]"),
    (lambda c: (c.query, c.key_cache[0], c.value_cache, c.cache_seqlens),
     CACHE + r"key_cache must be 4-D \(batch, H, S_max, E\)"),
], ids=["float", "bool", "query_rank3", "key_cache_rank3"])
def test_bad_arguments(make_call, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        kv_cache_attention(*make_call(Cache([4, 2], L=2, S_max=8)))


def test_opcheck_kv_cache_attention():
    cache = Cache([30, 7], L=3, S_max=40, seed=5)
    torch.library.opcheck(torch.ops.selfattn.kv_cache_attention.default,
                          (cache.query, cache.key_cache, cache.value_cache, cache.cache_seqlens),
                          dict(window=[10, -1], softcap=2.0))
