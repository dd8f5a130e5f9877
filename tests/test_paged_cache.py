"""kv_cache_attention on a paged cache: key_cache and value_cache hold blocks
(num_blocks, block_size, H, dim), and block_table lists each sequence's
blocks in order. The reference gathers the blocks into a contiguous cache
and runs each sequence alone through the float64 explicit reference
(helpers/feature_reference.py), with the dtype rule of helpers/reference.py.
Block tables are permuted and share blocks between sequences; the cache
rows that no sequence uses, and the table entries past a sequence's last
block, hold NaN and out-of-range indices, so reading one shows. Block sizes
from 1 to more than a key tile (512); decoding steps (the split-KV path) and
prefills; gradients into the blocks, gradcheck, torch.compile, opcheck and
bad input."""
import pytest
import torch

import torch_selfattn
from helpers.feature_reference import each_cached_sequence, explicit_attention, pytorch_with_explicit_rules
from helpers.reference import as_float64, assert_within_dtype_rule, poisoned_outputs

ops = torch.ops.selfattn
kv_cache_attention = torch_selfattn.kv_cache_attention
PADDING = 1 << 30  # a table entry past the used blocks: never read


class PagedCache:
    """query (B, Hq, L, E) and a paged cache whose sequences use
    cache_seqlens[b] keys; blocks are drawn in a random order, and sequence
    1 shares sequence 0's first blocks (a common prefix)."""

    def __init__(self, cache_seqlens, L, block_size, Hq=4, H=2, E=16, Ev=12, dtype=torch.float32, seed=0):
        g = torch.Generator().manual_seed(seed)
        B = len(cache_seqlens)
        self.block_size = block_size
        needed = [-(-n // block_size) for n in cache_seqlens]
        max_blocks = max(needed) + 1
        shared = min(needed[0], needed[1] if B > 1 else 0, 2)
        blocks = sum(needed) - shared + 3  # three blocks that no sequence uses
        order = torch.randperm(blocks, generator=g).tolist()
        self.block_table = torch.full((B, max_blocks), PADDING, dtype=torch.int32)
        for b, n in enumerate(needed):
            for i in range(n):
                self.block_table[b, i] = self.block_table[0, i] if (b == 1 and i < shared) else order.pop()

        def rand(*shape):
            return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

        self.query = rand(B, Hq, L, E)
        self.key_cache = torch.full((blocks, block_size, H, E), float("nan"), dtype=dtype)
        self.value_cache = torch.full((blocks, block_size, H, Ev), float("nan"), dtype=dtype)
        for b, n in enumerate(cache_seqlens):
            for j in range(n):
                block, row = self.block_table[b, j // block_size], j % block_size
                if b == 1 and j // block_size < shared:
                    continue  # sequence 0's keys
                self.key_cache[block, row] = rand(H, E)
                self.value_cache[block, row] = rand(H, Ev)
        self.cache_seqlens = torch.tensor(cache_seqlens, dtype=torch.int32)

    def leaves(self):
        return [t.clone().requires_grad_() for t in (self.query, self.key_cache, self.value_cache)]

    def gathered(self, key_cache, value_cache):
        """The contiguous cache (B, H, max_blocks·block_size, dim) that the table describes."""
        table = self.block_table.long().clamp(max=key_cache.shape[0] - 1)

        def gather(blocks):
            rows = blocks[table]  # (B, max_blocks, block_size, H, dim)
            return rows.flatten(1, 2).transpose(1, 2)

        return gather(key_cache), gather(value_cache)

    def ours(self, q, key_cache, value_cache, **kwargs):
        return kv_cache_attention(q, key_cache, value_cache, self.cache_seqlens, block_table=self.block_table, **kwargs)

    def reference(self, fn):
        used = self.cache_seqlens.tolist()

        def on_gathered(q, key_cache, value_cache, **kwargs):
            return each_cached_sequence(fn, used)(q, *self.gathered(key_cache, value_cache), **kwargs)

        return on_gathered

    def check(self, **kwargs):
        """The dtype rule on our output and the gradients of query and of
        both caches' blocks. Returns ours."""
        leaves = self.leaves()
        grad_out = torch.randn(*self.query.shape[:-1], self.value_cache.shape[-1],
                               generator=torch.Generator().manual_seed(1), dtype=torch.float64)

        def run(fn, leaves, grad_out, **kw):
            out = fn(*leaves, **kw)
            grads = torch.autograd.grad(out, leaves, grad_out, allow_unused=True, materialize_grads=True)
            # The blocks' unused rows get no gradient; the NaN they hold must not leak into the others'.
            return [out, *(g.nan_to_num() for g in grads)]

        with poisoned_outputs():
            got = run(self.ours, leaves, grad_out.to(self.query.dtype), **kwargs)
        pytorch = run(self.reference(pytorch_with_explicit_rules), leaves, grad_out.to(self.query.dtype), **kwargs)
        kwargs64 = {k: as_float64(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        expected = run(self.reference(explicit_attention), [as_float64(t) for t in leaves], grad_out, **kwargs64)
        for name, a, b, c in zip(["output", "grad_query", "grad_key_cache", "grad_value_cache"], got, pytorch,
                                 expected):
            assert_within_dtype_rule(name, a, b, c)
        return got


# (cache_seqlens, L, block_size): decoding steps of one and five queries
# (the split-KV path), a prefill longer than a query tile, block sizes from 1
# to more than a key tile, and lengths that are not multiples of them.
SHAPES = {
    "decode_block_16": ([37, 700, 5], 1, 16),
    "decode_block_1": ([9, 30, 4], 1, 1),
    "decode_block_3": ([10, 64, 2], 5, 3),
    "decode_block_600": ([1100, 650, 7], 2, 600),
    "prefill_block_32": ([150, 200], 140, 32),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_the_gathered_cache(shape, dtype):
    cache_seqlens, L, block_size = SHAPES[shape]
    PagedCache(cache_seqlens, L, block_size, dtype=dtype).check()


@pytest.mark.parametrize("L", [1, 3])
def test_split_keys_path(L):
    """One sequence and one kv head: its 1500 keys split into chunks across
    the cores (split_keys_forward.h), each chunk reading its own blocks."""
    PagedCache([1500], L, 16, H=1).check()


OPTIONS = {
    "not_causal": dict(is_causal=False),
    "window_alibi": dict(window=(20, -1), alibi_slopes=torch.tensor([0.5, 0.25, 0.125, 0.0625])),
    "softcap_scale": dict(softcap=3.0, scale=0.5),
}


@pytest.mark.parametrize("case", OPTIONS)
def test_options(case):
    PagedCache([37, 90, 5], 3, 8).check(**OPTIONS[case])


def test_sinks_and_logsumexp():
    cache = PagedCache([37, 90, 5], 3, 8, dtype=torch.float64)
    sinks = torch.randn(4, dtype=torch.float64)
    out, lse = cache.ours(cache.query, cache.key_cache, cache.value_cache, sinks=sinks, return_lse=True)
    key, value = cache.gathered(cache.key_cache, cache.value_cache)
    expected = kv_cache_attention(cache.query, key, value, cache.cache_seqlens, sinks=sinks, return_lse=True)
    torch.testing.assert_close(out, expected[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, expected[1], rtol=1e-12, atol=1e-12)


def test_one_thread_matches_all():
    cache = PagedCache([300, 700, 5], 1, 16)
    with torch.no_grad():
        every = cache.ours(cache.query, cache.key_cache, cache.value_cache)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            one = cache.ours(cache.query, cache.key_cache, cache.value_cache)
        finally:
            torch.set_num_threads(threads)
    torch.testing.assert_close(every, one, rtol=1e-6, atol=1e-6)


def test_gradcheck_with_shared_blocks():
    cache = PagedCache([7, 11, 3], 2, 3, Hq=2, H=1, E=4, Ev=3, dtype=torch.float64)
    q, key_cache, value_cache = cache.leaves()
    # gradcheck perturbs every element: the unused rows must be numbers.
    with torch.no_grad():
        key_cache.nan_to_num_(0.5)
        value_cache.nan_to_num_(0.5)
    assert torch.autograd.gradcheck(lambda q, k, v: cache.ours(q, k, v, return_lse=True), (q, key_cache, value_cache))


def test_double_backward_is_not_implemented():
    cache = PagedCache([7, 11], 2, 4, dtype=torch.float64)
    q, key_cache, value_cache = cache.leaves()
    out = cache.ours(q, key_cache, value_cache)
    (grad_q,) = torch.autograd.grad(out.sum(), q, create_graph=True)
    with pytest.raises(NotImplementedError, match="paged cache \\(block_table\\)"):
        torch.autograd.grad(grad_q.sum(), q)


def test_compile_matches_eager():
    cache = PagedCache([37, 90, 5], 2, 8)
    q, key_cache, value_cache = cache.leaves()
    with torch.no_grad():
        key_cache.nan_to_num_(0.0)
        value_cache.nan_to_num_(0.0)

    def loss(q, k, v):
        return cache.ours(q, k, v).square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    for a, b in zip(torch.autograd.grad(loss(q, key_cache, value_cache), (q, key_cache, value_cache)),
                    torch.autograd.grad(compiled(q, key_cache, value_cache), (q, key_cache, value_cache))):
        torch.testing.assert_close(a, b)


def test_opcheck():
    cache = PagedCache([37, 90, 5], 2, 8)
    key_cache, value_cache = (t.nan_to_num(0.0) for t in (cache.key_cache, cache.value_cache))
    torch.library.opcheck(ops.kv_cache_attention.default, (cache.query, key_cache, value_cache, cache.cache_seqlens),
                          dict(block_table=cache.block_table))


def bad_call(cache, **changes):
    args = dict(block_table=cache.block_table, cache_seqlens=cache.cache_seqlens, key_cache=cache.key_cache,
                value_cache=cache.value_cache) | changes
    return lambda: kv_cache_attention(cache.query, args["key_cache"], args["value_cache"], args["cache_seqlens"],
                                      block_table=args["block_table"])


@pytest.mark.parametrize("change, message", [
    (lambda c: dict(block_table=c.block_table.index_fill(1, torch.tensor([0]), c.key_cache.shape[0])),
     r"block_table\[0, 0\] = \d+ is not a block of the cache"),
    (lambda c: dict(block_table=c.block_table.index_fill(1, torch.tensor([0]), -1)),
     r"block_table\[0, 0\] = -1 is not a block of the cache"),
    (lambda c: dict(cache_seqlens=torch.tensor([37, -1, 5])), r"cache_seqlens\[1\] = -1"),
    (lambda c: dict(cache_seqlens=torch.tensor([37, 10_000, 5])), r"cache_seqlens\[1\] = 10000 .* must be in \[0, "),
    (lambda c: dict(block_table=c.block_table[:, :, None]), r"block_table must be 2-D"),
    (lambda c: dict(block_table=c.block_table[:2]), r"block_table must have one row per sequence"),
    (lambda c: dict(block_table=c.block_table.float()), r"block_table must be an integer tensor"),
    (lambda c: dict(value_cache=c.value_cache[:-1]), r"key and value must have one number of blocks"),
    (lambda c: dict(key_cache=c.key_cache[0]), r"key_cache must be 4-D \(num_blocks, block_size, H, E\)"),
])
def test_bad_input_names_the_argument(change, message):
    cache = PagedCache([37, 90, 5], 2, 8)
    with pytest.raises(RuntimeError, match=message):
        bad_call(cache, **change(cache))()
