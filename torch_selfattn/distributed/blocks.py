"""One block of the ring: attention of local queries against one rank's keys
and values, through the core ops, forward and backward.

The core op's backward is the gradient of the block's own attention, for its
own output and logsumexp: it renormalises the recomputed probabilities over
the block's keys, so handing it the merged logsumexp does not turn it into
the gradient of the merged attention. What the merge adds is a gradient on
the block's logsumexp, γ (merge.part_gradients). Since ∂lse/∂S = P, it adds
γ·P to the score gradient dS, that is
    dQ += scale · γ ∘ (P·K)        dK += scale · Pᵀ·(γ ∘ Q).
P·K is the block's attention output for values K, and Pᵀ·X is what the
backward writes as dV for output gradient X. So one forward with values [V | K]
gives O and P·K, and one backward with values [V | 0] and output gradient
[g | scale·γ∘Q] gives dV and the extra dK in its value gradient; the zero
columns leave dS, dQ and dK as they were.
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
    merge.part_gradients does."""
    value_dim = value.shape[-1]
    both, lse, rng_state = _ops.attention_forward(query, key, torch.cat([value, key], -1), None, 0.0, causal, scale)
    out, probs_key = both.split([value_dim, key.shape[-1]], -1)
    grad_out, grad_lse = part_gradients(out, lse)

    lse_term = (scale * grad_lse).unsqueeze(-1)
    padded_value = torch.cat([value, torch.zeros_like(key)], -1)
    padded_out = torch.cat([out, torch.zeros_like(probs_key)], -1)
    padded_grad = torch.cat([grad_out, lse_term * query], -1).to(query.dtype)
    grad_query, grad_key, grad_padded_value, _ = _ops.attention_backward(
        padded_grad, query, key, padded_value, None, padded_out, lse, rng_state, 0.0, causal, scale, False)
    grad_value, grad_key_from_lse = grad_padded_value.split([value_dim, key.shape[-1]], -1)
    acc = lse.dtype
    return (grad_query.to(acc) + lse_term * probs_key.to(acc),
            grad_key.to(acc) + grad_key_from_lse.to(acc),
            grad_value.to(acc))
