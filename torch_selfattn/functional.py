"""The user-facing functions: the drop-in SDPA, packed variable-length
batches and KV-cache decoding, all running on the torch-selfattn kernels.

Beyond PyTorch's SDPA, every function takes these keyword-only extras:

- ``window=(left, right)``: sliding-window (local) attention. Query i sees key
  j when ``-right <= i + shift - j <= left``; -1 is no bound on that side.
  Key tiles outside the band are skipped, so the cost is O(L·w).
- ``causal_alignment="top_left" | "bottom_right"``: where the causal mask and
  the window sit when L != S. ``shift`` is 0 for top-left (PyTorch's
  ``is_causal``) and S - L for bottom-right (what KV-cache decoding and
  chunked prefill need).
- ``alibi_slopes``: (Hq,) or (..., Hq); adds ``-slope·|i + shift - j|`` to the
  scores. The slopes get no gradient.
- ``softcap``: scores become ``softcap·tanh(score / softcap)`` (Gemma 2),
  before ALiBi and the mask are added.
- ``sinks``: (Hq,) attention sinks (gpt-oss): one logit per query head that
  joins every row's softmax denominator and has no value,
  ``out_i = Σ_j exp(s_ij) v_j / (exp(sinks[h]) + Σ_j exp(s_ij))``. The sinks
  get a gradient.
- ``return_lse=True``: return ``(out, lse)``, where ``lse`` is the logsumexp
  of each row's scores (the sink included), in float32 (float64 for float64
  inputs), with the shape of ``out`` less its last dim. ``lse`` is
  differentiable: a loss that uses it (merging partial attentions, ring
  attention) gets its gradients for query, key, value and the mask.
"""
import torch


def _overload(op, return_lse):
    """The op's overload: .with_lse returns (output, logsumexp)."""
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    return op.with_lse if return_lse else op.default


def scaled_dot_product_attention(
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=False,
    scale=None,
    enable_gqa=False,
    *,
    window=None,
    causal_alignment="top_left",
    alibi_slopes=None,
    softcap=None,
    sinks=None,
    return_lse=False,
):
    r"""softmax(query @ key.transpose(-2, -1) * scale + attn_mask) @ value, like
    :func:`torch.nn.functional.scaled_dot_product_attention`.

    Shapes: query (N, ..., Hq, L, E), key (N, ..., H, S, E), value (N, ..., H, S, Ev);
    the result is (N, ..., Hq, L, Ev). The batch dims broadcast as in PyTorch.

    Args:
        attn_mask: bool (True = takes part) or float (added to the scores),
            broadcastable to (N, ..., Hq, L, S). A float mask that requires
            grad gets its gradient.
        dropout_p: probability of dropping an attention weight; drawn from
            PyTorch's default generator, so ``torch.manual_seed`` fixes it.
        is_causal: causal mask (top-left aligned unless causal_alignment
            says otherwise); not together with attn_mask.
        scale: defaults to 1 / sqrt(E).
        enable_gqa: let Hq be a multiple of H (grouped-query attention),
            without expanding key and value.
        window, causal_alignment, alibi_slopes, softcap, sinks, return_lse:
            see the module's docstring.
    """
    op = torch.ops.selfattn.scaled_dot_product_attention
    return _overload(op, return_lse)(
        query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
        window=window, causal_alignment=causal_alignment, alibi_slopes=alibi_slopes, softcap=softcap, sinks=sinks,
    )


def varlen_attention(
    query,
    key,
    value,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    is_causal=False,
    scale=None,
    *,
    window=None,
    causal_alignment="top_left",
    alibi_slopes=None,
    softcap=None,
    sinks=None,
    return_lse=False,
):
    r"""Attention over a packed batch of sequences of different lengths, with
    no padding computed.

    Shapes: query (total_q, Hq, E), key (total_k, H, E), value (total_k, H, Ev),
    with Hq a multiple of H. Sequence s owns query rows
    ``cu_seqlens_q[s]:cu_seqlens_q[s + 1]`` and key rows
    ``cu_seqlens_k[s]:cu_seqlens_k[s + 1]``; both offset tensors have
    sequences + 1 integer entries, from 0 to total. max_seqlen_q and
    max_seqlen_k bound the lengths (Python ints, so that nothing is read back
    from the device and torch.compile does not break the graph). Returns a
    (total_q, Hq, Ev) view, and with return_lse=True the logsumexp too, of
    shape (Hq, total_q). Differentiable; alibi_slopes may be (sequences, Hq).
    """
    op = torch.ops.selfattn.varlen_attention
    return _overload(op, return_lse)(
        query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, is_causal, scale,
        window=window, causal_alignment=causal_alignment, alibi_slopes=alibi_slopes, softcap=softcap, sinks=sinks,
    )


def kv_cache_attention(
    query, key_cache, value_cache, cache_seqlens, *, is_causal=True, scale=None, window=None, alibi_slopes=None,
    softcap=None, sinks=None, return_lse=False, block_table=None
):
    r"""One decoding step against a KV cache.

    Shapes: query (B, Hq, L, E) with L the new tokens of each sequence (1 to
    16, typically), key_cache (B, H, S_max, E), value_cache (B, H, S_max, Ev),
    cache_seqlens (B,) integers: sequence b uses the first cache_seqlens[b]
    keys, the new tokens' own included, and its queries are its last L
    positions, so causal masks and windows are bottom-right aligned. On the
    CPU a step with few queries splits the keys across the cores and merges
    the parts by logsumexp. Returns (B, Hq, L, Ev), and with return_lse=True
    the logsumexp too, (B, Hq, L).

    A paged cache: key_cache (num_blocks, block_size, H, E) and value_cache
    (num_blocks, block_size, H, Ev) hold blocks of any block_size >= 1, and
    block_table (B, max_blocks) integers lists each sequence's blocks in
    order: its key j is row j % block_size of block
    block_table[b, j // block_size]. Sequences may share blocks (a common
    prefix); entries past a sequence's last used block are not read. The
    CPU kernels read the blocks in place; gradients flow to the blocks.
    """
    op = torch.ops.selfattn.kv_cache_attention
    return _overload(op, return_lse)(
        query, key_cache, value_cache, cache_seqlens,
        is_causal=is_causal, scale=scale, window=window, alibi_slopes=alibi_slopes, softcap=softcap, sinks=sinks,
        block_table=block_table,
    )
