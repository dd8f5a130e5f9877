"""Attention probabilities for chosen heads and query rows.

The kernels never form softmax(Q·Kᵀ·scale + mask); to look at it, this module
recomputes it for the heads and rows asked for, one block of query rows at a
time: P = exp(scores - logsumexp), with the row logsumexp that our forward
returns. Memory is the result plus one block of scores (and, for chosen rows
of a causal map, a bool mask of those rows × keys), so one head's map at
L = 8192 costs about that map, not B×H×L×S.
"""
import math

import torch

from torch_selfattn._library import _SUPPORTED_DTYPES, _has_kernel

# Query rows per block: one block of scores is ROW_BLOCK × S per head.
ROW_BLOCK = 128


def _selection(selection, size, name):
    """The indices a heads= or rows= argument picks, as a 1-D int64 tensor,
    and whether the dimension is dropped (a plain int, as in indexing)."""
    if selection is None:
        return torch.arange(size), False
    if isinstance(selection, slice):
        return torch.arange(size)[selection], False
    dropped = isinstance(selection, int) and not isinstance(selection, bool)
    index = torch.as_tensor(selection)
    if index.dim() > 1 or (index.numel() and (index.is_floating_point() or index.dtype == torch.bool)):
        raise ValueError(f"attention_weights: {name} must be None, an int, a slice or a 1-D sequence of ints, "
                         f"got {selection!r}")
    index = index.reshape(-1).long()
    if index.numel() and (index.min() < -size or index.max() >= size):
        raise IndexError(f"attention_weights: {name} {index.tolist()} out of range for size {size}")
    return index.remainder(size), dropped


def _check(query, key, attn_mask, is_causal):
    for name, t in (("query", query), ("key", key)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() < 3:
            raise ValueError(f"attention_weights: {name} must be a floating-point tensor of shape (..., heads, length, "
                             f"head_dim), got {type(t).__name__ if not isinstance(t, torch.Tensor) else tuple(t.shape)}")
    if query.dtype != key.dtype or query.device != key.device:
        raise ValueError(f"attention_weights: query and key must share dtype and device, got "
                         f"{query.dtype}/{query.device} and {key.dtype}/{key.device}")
    try:
        batch = torch.broadcast_shapes(query.shape[:-3], key.shape[:-3])
    except RuntimeError:
        raise ValueError(f"attention_weights: the batch dims of query {tuple(query.shape[:-3])} and key "
                         f"{tuple(key.shape[:-3])} do not broadcast") from None
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"attention_weights: query and key must have the same head_dim, got "
                         f"{query.shape[-1]} and {key.shape[-1]}")
    if query.shape[-3] % key.shape[-3]:
        raise ValueError(f"attention_weights: the query's heads ({query.shape[-3]}) must be a multiple of the key's "
                         f"({key.shape[-3]})")
    if attn_mask is not None:
        if is_causal:
            raise ValueError("attention_weights: attn_mask and is_causal=True cannot be given together")
        if not (attn_mask.dtype == torch.bool or attn_mask.is_floating_point()):
            raise ValueError(f"attention_weights: attn_mask must be bool or floating point, got {attn_mask.dtype}")
        scores = (*batch, *query.shape[-3:-1], key.shape[-2])
        try:
            fits = torch.broadcast_shapes(attn_mask.shape, scores) == scores
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"attention_weights: attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to the "
                             f"scores' shape {scores}")


def _rows_of_mask(mask, heads, rows):
    """The mask restricted to the chosen heads and rows, its broadcast (size 1)
    dims left as they are, so nothing is expanded."""
    mask = mask.reshape((1,) * max(0, 3 - mask.dim()) + tuple(mask.shape))
    if mask.shape[-3] != 1:
        mask = mask.index_select(-3, heads.to(mask.device))
    if mask.shape[-2] != 1:
        mask = mask.index_select(-2, rows.to(mask.device))
    return mask


def _causal_rows(rows, keys):
    """Top-left causal mask of the given query positions: row i sees keys j <= i."""
    return rows[:, None] >= torch.arange(keys, device=rows.device)[None, :]


def _add_mask(scores, mask):
    """scores + mask, in place: a block of scores is the loop's largest temporary."""
    if mask is None:
        return scores
    # A mask with more batch dims than q and k widens the scores first.
    scores = scores.expand(torch.broadcast_shapes(scores.shape, mask.shape)).contiguous()
    if mask.dtype == torch.bool:
        return scores.masked_fill_(~mask, float("-inf"))
    return scores.add_(mask.to(scores.dtype))


def _as_4d(t, batch):
    """(..., a, b, c) broadcast to batch and flattened to (B, a, b, c); a view
    where the batch dims are broadcast ones."""
    t = t.reshape((1,) * (len(batch) + 3 - t.dim()) + tuple(t.shape))
    return t.expand(*batch, *t.shape[-3:]).reshape(-1, *t.shape[-3:])


def _our_logsumexp(q, k, mask, is_causal, scale, batch):
    """Row logsumexp of q·kᵀ·scale + mask from our forward kernel. The value
    is a zero-stride column, so the kernel's P·V costs next to nothing."""
    q4, k4 = _as_4d(q, batch), _as_4d(k, batch)
    value = k4.new_zeros(()).expand(*k4.shape[:-1], 1)
    mask4 = None if mask is None else _as_4d(mask, batch)
    _, logsumexp, _ = torch.ops.selfattn.attention_forward(q4, k4, value, mask4, 0.0, is_causal, scale)
    return logsumexp.reshape(*batch, *q.shape[-3:-1])


@torch.no_grad()
def attention_weights(query, key, attn_mask=None, is_causal=False, scale=None, heads=None, rows=None):
    r"""softmax(query @ key.transpose(-2, -1) * scale + attn_mask) for chosen
    heads and query rows: the attention probabilities that
    :func:`torch_selfattn.scaled_dot_product_attention` applies (before dropout).

    Args:
        query: (..., Hq, L, E).
        key: (..., H, S, E), with Hq a multiple of H; query head h reads key
            head h // (Hq // H), as with ``enable_gqa=True``.
        attn_mask, is_causal, scale: as in scaled_dot_product_attention.
        heads: which query heads: None (all), an int (the head dim is then
            dropped), a slice, or a sequence of ints.
        rows: which query rows (positions), in the same forms.

    Returns:
        (..., heads, rows, S) probabilities in the query's dtype, computed in
        float32 (float64 for float64 inputs; q·kᵀ in float64 on the CPU).
        Each row sums to 1; a row whose every key is masked is 0, as in
        PyTorch's SDPA. Not differentiable.

    The work goes one block of query rows at a time, normalised with the row
    logsumexp of torch-selfattn's forward kernel (where it has one for the
    device and dtype; otherwise each block computes its own), so memory is the
    result plus one block, never the scores of every head.
    """
    _check(query, key, attn_mask, is_causal)
    num_heads, length, head_dim = query.shape[-3:]
    keys = key.shape[-2]
    head_index, drop_head = _selection(heads, num_heads, "heads")
    row_index, drop_row = _selection(rows, length, "rows")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    device = query.device
    compute_dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    # The products q·kᵀ and the exp in float64 on the CPU: on our 2-core
    # development machines, PyTorch's first float32 bmm, and its first float32
    # exp, in a process have returned errors of 1e-4 (about 13 bits) in a few
    # percent of processes, which the probabilities would inherit.
    product_dtype = torch.float64 if device.type == "cpu" else compute_dtype

    # The chosen heads and rows; key heads repeated per query head (only the chosen ones).
    group = num_heads // key.shape[-3]
    rows_at = row_index.to(device)
    q = query.index_select(-3, head_index.to(device)).index_select(-2, rows_at)
    k = key.index_select(-3, (head_index // group).to(device))
    mask = None if attn_mask is None else _rows_of_mask(attn_mask.to(device), head_index, row_index)
    batch = torch.broadcast_shapes(q.shape[:-3], k.shape[:-3], mask.shape[:-3] if mask is not None else ())

    logsumexp = None
    if _has_kernel(device.type) and query.dtype in _SUPPORTED_DTYPES:
        # The chosen rows keep their own positions, so a causal subset of rows
        # is a mask for the kernel; all rows are its own is_causal.
        subset_causal = is_causal and rows is not None
        logsumexp = _our_logsumexp(q, k, _causal_rows(rows_at, keys) if subset_causal else mask,
                                   is_causal and not subset_causal, scale, batch)

    out = torch.empty(*batch, q.shape[-3], q.shape[-2], keys, dtype=query.dtype, device=device)
    k_t = k.to(product_dtype).transpose(-2, -1)
    for start in range(0, q.shape[-2], ROW_BLOCK):
        block = slice(start, start + ROW_BLOCK)
        scores = torch.matmul(q[..., block, :].to(product_dtype), k_t).to(compute_dtype).mul_(scale)
        if is_causal:
            scores = _add_mask(scores, _causal_rows(rows_at[block], keys))
        elif mask is not None:
            scores = _add_mask(scores, mask if mask.shape[-2] == 1 else mask[..., block, :])
        row_lse = logsumexp[..., block] if logsumexp is not None else torch.logsumexp(scores, dim=-1)
        row_lse = row_lse.to(compute_dtype).unsqueeze(-1)
        # A fully masked row has logsumexp -inf: PyTorch's SDPA gives it zeros.
        # In place where it can be: a block of float64 probabilities is the largest temporary.
        probs = scores.sub_(row_lse).to(product_dtype).exp_()
        out[..., block, :] = probs.masked_fill_(torch.isneginf(row_lse), 0.0)

    if drop_row:
        out = out.squeeze(-2)
    if drop_head:
        out = out.squeeze(-2 if drop_row else -3)
    return out
