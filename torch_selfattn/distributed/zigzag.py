"""The zig-zag layout of a causal sequence over a ring of W ranks.

The sequence is cut into 2W equal chunks and rank i holds chunks i and
2W-1-i, one from the front and one from the back. Under a causal mask the
front of the sequence has little work and the back much; pairing them gives
every rank the same amount, so no rank waits for the others at any step of
the ring.
"""
from dataclasses import dataclass

import torch


def _check_divisible(length, parts, what):
    if length % parts:
        raise ValueError(f"{what}: the sequence length ({length}) must be a multiple of {parts} "
                         f"(2 x world_size chunks)")


def zigzag_shard(full, rank, world_size, dim=-2):
    """Rank ``rank``'s slice of ``full``: chunks ``rank`` and
    ``2 * world_size - 1 - rank`` of 2·world_size along ``dim``, concatenated."""
    if not 0 <= rank < world_size:
        raise ValueError(f"zigzag_shard: rank must be in [0, {world_size}), got {rank}")
    _check_divisible(full.shape[dim], 2 * world_size, "zigzag_shard")
    chunks = full.chunk(2 * world_size, dim)
    return torch.cat([chunks[rank], chunks[2 * world_size - 1 - rank]], dim)


def zigzag_unshard(shards, dim=-2):
    """The full sequence from every rank's zig-zag shard, given in rank order."""
    halves = []
    for rank, shard in enumerate(shards):
        _check_divisible(shard.shape[dim], 2, f"zigzag_unshard: shard {rank}")
        halves.append(shard.chunk(2, dim))
    return torch.cat([front for front, _ in halves] + [back for _, back in reversed(halves)], dim)


@dataclass(frozen=True)
class Block:
    """The part of a (local query, visiting key/value) pair that takes part in
    attention: query rows ``rows`` against key columns ``cols``, with a
    top-left causal mask or none."""

    rows: slice
    cols: slice
    causal: bool


ALL = slice(None)


def block_of(rank, source, local_len, is_causal):
    """What rank ``rank`` computes against the keys and values of rank
    ``source``. Without a mask, everything. With the causal mask in the
    zig-zag layout, where each shard is (front chunk, back chunk):
      - its own shard: the two chunks are in sequence order, so the causal
        mask of the whole shard is the right one;
      - an earlier rank's: both query chunks see the front key chunk whole,
        and neither sees the back one (it comes after both);
      - a later rank's: only the back query chunk sees anything, and it sees
        both key chunks whole.
    The last two are the same amount of work: half of a full block."""
    if not is_causal:
        return Block(ALL, ALL, False)
    half = local_len // 2
    if source == rank:
        return Block(ALL, ALL, True)
    if source < rank:
        return Block(ALL, slice(0, half), False)
    return Block(slice(half, None), ALL, False)
