"""ring_attention: scaled dot-product attention over a sequence sharded
across the ranks of a process group."""
import torch.distributed as dist

from torch_selfattn.distributed import checks
from torch_selfattn.distributed.ring import RingAttention
from torch_selfattn.distributed.ring_comm import Ring


def ring_attention(query, key, value, group=None, is_causal=False, scale=None, enable_gqa=False, attn_mask=None,
                   dropout_p=0.0):
    r"""softmax(Q·Kᵀ·scale)·V over the whole sequence, for a sequence whose
    queries, keys and values are sharded over the ranks of ``group``.

    Each rank passes its own shard, query (B, Hq, L/W, E), key (B, H, L/W, E)
    and value (B, H, L/W, Ev), and gets the output rows of its queries,
    (B, Hq, L/W, Ev). The key/value shards travel around the ring with
    torch.distributed point-to-point ops, and the gradients of query, key and
    value flow through autograd, each to the rank that holds the shard.

    Args:
        group: the process group that holds the sequence (default: the
            default group). All ranks of it must call together, with shards
            of one shape.
        is_causal: causal attention over the whole sequence. The shards must
            then be in the zig-zag layout: rank i holds chunks i and 2W-1-i
            of 2W (``zigzag_shard``). Without it, any split of the sequence
            works.
        scale: defaults to 1/sqrt(E).
        enable_gqa: let Hq be a multiple of H (grouped-query attention).
        attn_mask, dropout_p: not supported; present so that SDPA-style calls
            get a clear error rather than a silent difference.
    """
    checks.check_unsupported(attn_mask, dropout_p)
    checks.check_local_inputs(query, key, value, is_causal, enable_gqa)
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("ring_attention: torch.distributed is not initialised; call "
                           "torch.distributed.init_process_group first (torchrun sets up its environment)")
    ring = Ring(group)
    checks.check_ranks_agree(ring, query, key, value, is_causal)
    scale = query.shape[-1] ** -0.5 if scale is None else float(scale)
    return RingAttention.apply(query, key.contiguous(), value.contiguous(), ring, is_causal, scale)
