"""One block of the ring: attention of local queries against one rank's keys
and values, through the core ops, forward and backward.

The backward of a block is the gradient of the block's own attention for the
gradients that the merge hands back to its output and its logsumexp
(merge.part_gradients). The core backward takes both: the logsumexp's
gradient γ adds γ·P to the score gradient (∂lse/∂S = P).
"""
import torch

_ops = torch.ops.selfattn


def block_forward(query, key, value, causal, scale):
    """(output, logsumexp) of the block, without dropout or mask."""
    out, lse, _ = _ops.attention_forward(query, key, value, None, 0.0, causal, scale)
    return out, lse


def block_backward(query, key, value, causal, scale, part_gradients):
    """(dQ, dK, dV) of the block, in the logsumexp's dtype (float32, or
    float64 for float64 inputs), ready to be summed. ``part_gradients`` maps
    the block's recomputed (output, logsumexp) to their gradients (g, γ), as
    merge.part_gradients does. The recompute is the block's forward: the
    ring's forward merges the blocks in place and keeps none of them."""
    out, lse, rng_state = _ops.attention_forward(query, key, value, None, 0.0, causal, scale)
    grad_out, grad_lse = part_gradients(out, lse)
    grads = _ops.attention_backward(grad_out.to(query.dtype), query, key, value, None, out, lse, rng_state, 0.0,
                                    causal, scale, False, grad_lse)
    return tuple(g.to(lse.dtype) for g in grads[:3])
