"""Argument checks of ring_attention. Each rank checks its own inputs, then
the ranks compare their shapes, so that a mistake on one rank is an error on
every rank rather than a hang or a wrong answer."""
import torch
import torch.distributed as dist

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_NAME = "ring_attention"


def _fail(message):
    raise ValueError(f"{_NAME}: {message}")


def check_unsupported(attn_mask, dropout_p):
    if attn_mask is not None:
        _fail("attn_mask is not supported: a mask over the whole sequence cannot follow the shards "
              "around the ring; use is_causal=True for causal attention")
    if dropout_p > 0.0:
        _fail(f"dropout_p must be 0 (ring attention is dropout-free), got {dropout_p}")


def check_local_inputs(query, key, value, is_causal, enable_gqa):
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            _fail(f"{name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 4:
            _fail(f"{name} must be 4-D (batch, heads, local length, dim), got shape {list(t.shape)}")
        if t.dtype != query.dtype or t.device != query.device:
            _fail(f"query, key and value must share one dtype and device, got query {query.dtype} on "
                  f"{query.device} and {name} {t.dtype} on {t.device}")
    if query.dtype not in _DTYPES:
        _fail(f"query must be float16, bfloat16, float32 or float64, got {query.dtype}")
    (batch, q_heads, length, dim), (_, kv_heads, _, _) = query.shape, key.shape
    if key.shape[:3] != value.shape[:3]:
        _fail(f"key and value must share batch, heads and length, got key {list(key.shape)} and "
              f"value {list(value.shape)}")
    if key.shape[0] != batch or key.shape[2] != length or key.shape[3] != dim:
        _fail(f"key must be (batch, heads, local length, dim) with query's batch, local length and dim "
              f"(self-attention: each rank holds the same slice of the sequence for all three), got query "
              f"{list(query.shape)} and key {list(key.shape)}")
    if kv_heads != q_heads and not (enable_gqa and kv_heads > 0 and q_heads % kv_heads == 0):
        need = "a divisor of" if enable_gqa else "equal to (or, with enable_gqa=True, a divisor of)"
        _fail(f"key's head count ({kv_heads}) must be {need} query's ({q_heads})")
    if length == 0:
        _fail(f"the local length must be positive, got query of shape {list(query.shape)}")
    if is_causal and length % 2:
        _fail(f"with is_causal=True the local length must be even (the zig-zag layout holds two chunks "
              f"per rank), got {length}")


def check_ranks_agree(ring, query, key, value, is_causal):
    """Every rank must hold shards of one shape and ask for the same mask."""
    mine = torch.tensor([*query.shape, *key.shape, *value.shape, int(is_causal)], device=query.device)
    everyone = [torch.empty_like(mine) for _ in range(ring.world_size)]
    dist.all_gather(everyone, mine, group=ring.group)
    for rank, theirs in enumerate(everyone):
        if not torch.equal(theirs, mine):
            q, k, v, causal = theirs[:4].tolist(), theirs[4:8].tolist(), theirs[8:12].tolist(), bool(theirs[12])
            _fail(f"every rank must pass shards of the same shape and the same is_causal (uneven shards?): "
                  f"rank {ring.rank} has query {list(query.shape)}, key {list(key.shape)}, value "
                  f"{list(value.shape)}, is_causal={is_causal}; rank {rank} has query {q}, key {k}, value {v}, "
                  f"is_causal={causal}")
