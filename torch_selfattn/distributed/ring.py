"""The ring passes. Each rank keeps its queries; the keys and values travel
once around the ring, and at every step a rank attends its queries to the
shard it holds while the next shard is already on its way.

Forward: the partial outputs are merged by their logsumexps, in float32.
Backward: a second pass. The keys and values travel again, now followed by
the float32 accumulators of their gradients, which collect every rank's
contribution and arrive back at their owner one step after the last block.
"""
import torch

from torch_selfattn.distributed import blocks, merge
from torch_selfattn.distributed.zigzag import block_of

# Tags of the two passes that are in flight together in the backward.
_KEY_VALUE_TAG, _GRADIENT_TAG = 0, 2


def _shard_blocks(ring, local_len, is_causal):
    """For each ring step, the Block of this rank's queries against the
    shard it holds then."""
    return [block_of(ring.rank, ring.source(step), local_len, is_causal) for step in range(ring.world_size)]


def _travelling(ring, tensors, tag):
    """Yields ``tensors`` as they arrive at each step, the next step's already
    in flight while the caller computes on the current one."""
    for step in range(ring.world_size):
        pending = ring.pass_along(tensors, tag) if step + 1 < ring.world_size else None
        yield tensors
        if pending is not None:
            tensors = pending.wait()


def ring_forward(ring, query, key, value, is_causal, scale):
    """The merged (output, logsumexp) of this rank's queries over every
    shard: output in the query's dtype, logsumexp in float32 (float64 for
    float64 inputs)."""
    out = lse = None
    plan = _shard_blocks(ring, query.shape[-2], is_causal)
    for block, (k, v) in zip(plan, _travelling(ring, [key, value], _KEY_VALUE_TAG)):
        part_out, part_lse = blocks.block_forward(query[..., block.rows, :], k[..., block.cols, :],
                                                  v[..., block.cols, :], block.causal, scale)
        if out is None:  # the first block is the rank's own, which covers every row
            out, lse = part_out.to(part_lse.dtype), part_lse
        else:
            merge.merge_into(out[..., block.rows, :], lse[..., block.rows], part_out, part_lse)
    return out.to(query.dtype), lse


def ring_backward(ring, grad_out, query, key, value, out, lse, is_causal, scale):
    """(dQ, dK, dV) of this rank's shards, in the inputs' dtype."""
    acc = lse.dtype
    out_dot_grad = merge.row_dot(grad_out, out, acc)
    grad_query = torch.zeros(query.shape, dtype=acc, device=query.device)
    grad_kv = [torch.zeros(key.shape, dtype=acc, device=key.device),
               torch.zeros(value.shape, dtype=acc, device=value.device)]
    plan = _shard_blocks(ring, query.shape[-2], is_causal)
    for step, (block, (k, v)) in enumerate(zip(plan, _travelling(ring, [key, value], _KEY_VALUE_TAG))):
        rows, cols = block.rows, block.cols

        def part_gradients(part_out, part_lse):
            return merge.part_gradients(grad_out[..., rows, :], out_dot_grad[..., rows], lse[..., rows],
                                        part_out, part_lse)

        dq, dk, dv = blocks.block_backward(query[..., rows, :], k[..., cols, :], v[..., cols, :], block.causal,
                                           scale, part_gradients)
        grad_query[..., rows, :] += dq
        if step > 0:  # the accumulators of the shard we hold, from the previous rank
            grad_kv = incoming.wait()
        grad_kv[0][..., cols, :] += dk
        grad_kv[1][..., cols, :] += dv
        # The last pass brings every shard's gradients home.
        incoming = ring.pass_along(grad_kv, _GRADIENT_TAG)
    grad_key, grad_value = incoming.wait()
    return grad_query.to(query.dtype), grad_key.to(key.dtype), grad_value.to(value.dtype)


class RingAttention(torch.autograd.Function):
    """Autograd for the ring: the forward and backward passes above, each
    with its own communication."""

    @staticmethod
    def forward(ctx, query, key, value, ring, is_causal, scale):
        out, lse = ring_forward(ring, query, key, value, is_causal, scale)
        ctx.save_for_backward(query, key, value, out, lse)
        ctx.ring, ctx.is_causal, ctx.scale = ring, is_causal, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, out, lse = ctx.saved_tensors
        grads = ring_backward(ctx.ring, grad_out, query, key, value, out, lse, ctx.is_causal, ctx.scale)
        return (*grads, None, None, None)
