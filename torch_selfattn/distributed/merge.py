"""Merging partial attentions by their logsumexps, and the gradients that the
merge hands back to each part.

A query row's attention over all keys, from parts over disjoint key sets
with outputs O_i and logsumexps lse_i:
    LSE = log Σ_i exp(lse_i),  O = Σ_i w_i O_i,  w_i = exp(lse_i − LSE).
Backward, for the output gradient dO:
    ∂/∂O_i = w_i dO,   ∂/∂lse_i = w_i (dO·O_i − dO·O).
"""
import torch


def merge_into(out, lse, part_out, part_lse):
    """Adds a part to the running merge, in place: ``out`` (…, L, Ev) and
    ``lse`` (…, L) are float32 (or float64) accumulators, or views of rows of
    them. Every row of both must have seen at least one key, so that no
    logsumexp is -inf."""
    merged = torch.logaddexp(lse, part_lse)
    out.mul_(torch.exp(lse - merged).unsqueeze(-1))
    out.add_(part_out.to(out.dtype) * torch.exp(part_lse - merged).unsqueeze(-1))
    lse.copy_(merged)


def row_dot(grad_out, out, dtype):
    """dO·O for every row, in ``dtype``."""
    return (grad_out.to(dtype) * out.to(dtype)).sum(-1)


def part_gradients(grad_out, out_dot_grad, lse, part_out, part_lse):
    """The gradients of a part's output and logsumexp, given the merged
    ``lse`` and ``out_dot_grad`` = row_dot(dO, O). Computed in the
    logsumexp's dtype (float32 or float64)."""
    acc = lse.dtype
    weight = torch.exp(part_lse - lse)
    grad_part_out = grad_out.to(acc) * weight.unsqueeze(-1)
    grad_part_lse = weight * (row_dot(grad_out, part_out, acc) - out_dot_grad)
    return grad_part_out, grad_part_lse
