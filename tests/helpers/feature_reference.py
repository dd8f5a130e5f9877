"""The yardstick for the features beyond PyTorch's SDPA: sliding windows,
causal alignment, ALiBi, softcap, packed sequences and KV caches.

PyTorch has none of them as arguments, but all of them as plain tensor
operations: a window or an alignment is a band of -inf in an explicit mask,
ALiBi a float bias, softcap a tanh of the scores, a packed batch a loop over
its sequences. ``explicit_attention`` writes that out with PyTorch's
elementwise ops; on float64 copies of the inputs it is the reference. The
low-precision yardstick (what a user gets from PyTorch in that dtype) is
PyTorch's SDPA with the same rules as an explicit float mask in the dtype,
or, for softcap, which no mask can express, explicit_attention in the dtype
(also where PyTorch's kernels refuse the call or give NaN, as
reference.pytorch_results does). Every function works on the inputs' device.

The rules, as csrc/common/score_rules.h states them: with
d = i + shift - j (shift = S - L for bottom-right alignment, else 0), key j is
hidden from query i when causal and d < 0, when window_left >= 0 and
d > window_left, or when window_right >= 0 and -d > window_right. A query
that sees no key gets output 0.
"""
import torch
from torch.nn.attention import sdpa_kernel

from helpers.reference import (YARDSTICK_BACKENDS, as_float64, assert_results_within_dtype_rule, dropout_multipliers,
                               ours, poisoned_outputs, pytorch_sdpa, run_attention)

NO_BOUND = -1


def diagonal_distance(L, S, causal_alignment="top_left", device="cpu"):
    """d = i + shift - j for query i and key j: (L, S) int64."""
    shift = S - L if causal_alignment == "bottom_right" else 0
    return torch.arange(L, device=device)[:, None] + shift - torch.arange(S, device=device)[None, :]


def visible_keys(d, is_causal=False, window=None):
    """(L, S) bool: which keys each query sees."""
    left, right = window if window is not None else (NO_BOUND, NO_BOUND)
    seen = torch.ones_like(d, dtype=torch.bool)
    if is_causal:
        seen &= d >= 0
    if left != NO_BOUND:
        seen &= d <= left
    if right != NO_BOUND:
        seen &= -d <= right
    return seen


def score_bias(L, S, dtype, *, is_causal=False, window=None, causal_alignment="top_left", alibi_slopes=None,
               device="cpu"):
    """The additive bias the rules amount to: -slope·|d| (computed in float64,
    rounded once to dtype) and -inf on hidden keys; (L, S), or (..., Hq, L, S)
    with ALiBi."""
    d = diagonal_distance(L, S, causal_alignment, device)
    bias = torch.zeros(L, S, dtype=dtype, device=device)
    if alibi_slopes is not None:
        bias = (-alibi_slopes.double()[..., None, None] * d.abs()).to(dtype)
    return bias.masked_fill(~visible_keys(d, is_causal, window), float("-inf"))


def expand_kv_heads(t, q_heads):
    return t.repeat_interleave(q_heads // t.shape[-3], dim=-3)


def explicit_attention(q, k, v, attn_mask=None, is_causal=False, scale=None, enable_gqa=False, *, window=None,
                       causal_alignment="top_left", alibi_slopes=None, softcap=None, dropout_multipliers=None,
                       sinks=None, return_lse=False):
    """The features written out with PyTorch's ops in the inputs' dtype, on
    (..., H, L, E) tensors. dropout_multipliers (..., Hq, L, S), when given,
    multiply the probabilities (the kept/dropped pattern of a dropout run).
    sinks (Hq,) are an explicit extra column of the scores, dropped after the
    softmax; return_lse=True also returns torch.logsumexp of the scores (that
    column included)."""
    if enable_gqa:
        k, v = expand_kv_heads(k, q.shape[-3]), expand_kv_heads(v, q.shape[-3])
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    L, S = scores.shape[-2:]
    scores = scores + score_bias(L, S, scores.dtype, is_causal=is_causal, window=window,
                                 causal_alignment=causal_alignment, alibi_slopes=alibi_slopes, device=q.device)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    if sinks is not None:
        scores = torch.cat([scores, sinks.to(scores.dtype).view(-1, 1, 1).expand(*scores.shape[:-1], 1)], -1)
    # A row that sees no key has output 0 (and no NaN in any gradient).
    blind = (scores == float("-inf")).all(-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(blind, 0), dim=-1).masked_fill(blind, 0)
    if sinks is not None:
        probs = probs[..., :-1]
    if dropout_multipliers is not None:
        probs = probs * dropout_multipliers.to(probs.dtype)
    out = probs @ v
    if not return_lse:
        return out
    lse = torch.logsumexp(scores.masked_fill(blind, 0), -1, keepdim=True).masked_fill(blind, float("-inf"))
    return out, lse.squeeze(-1)


def with_dropout(query, key, p, seed):
    """(ours, reference) for a run with dropout: our SDPA after
    torch.manual_seed(seed), and explicit_attention with the multipliers
    that run draws (reference.dropout_multipliers); both take keyword
    arguments such as sinks and return_lse."""
    z = dropout_multipliers(query, key, p, seed)

    def dropped_ours(q, k, v, **kwargs):
        torch.manual_seed(seed)
        return ours(q, k, v, dropout_p=p, **kwargs)

    def dropped_reference(q, k, v, **kwargs):
        return explicit_attention(q, k, v, dropout_multipliers=z.to(q.dtype), **kwargs)

    return dropped_ours, dropped_reference


def pytorch_with_explicit_rules(q, k, v, attn_mask=None, is_causal=False, scale=None, enable_gqa=False, *,
                                window=None, causal_alignment="top_left", alibi_slopes=None, softcap=None):
    """What PyTorch offers for the same job in the inputs' dtype: its SDPA
    (among reference.YARDSTICK_BACKENDS) with the rules and attn_mask as one
    explicit mask, summed in float64 and rounded once; explicit_attention in
    the dtype for softcap, which no mask expresses, for empty sequences, and
    where PyTorch's kernels refuse the call or give NaN (rows that see no
    key)."""
    options = dict(is_causal=is_causal, window=window, causal_alignment=causal_alignment, alibi_slopes=alibi_slopes)

    def by_hand():
        return explicit_attention(q, k, v, attn_mask, scale=scale, enable_gqa=enable_gqa, softcap=softcap, **options)

    L, S = q.shape[-2], k.shape[-2]
    if softcap or L == 0 or S == 0:
        return by_hand()
    bias = score_bias(L, S, torch.float64, device=q.device, **options)
    if attn_mask is None:
        mask = bias.to(q.dtype)
    elif attn_mask.dtype == torch.bool:
        mask = bias.masked_fill(~attn_mask, float("-inf")).to(q.dtype)
    else:
        mask = (attn_mask.double() + bias).to(attn_mask.dtype)
    try:
        with sdpa_kernel(YARDSTICK_BACKENDS):
            out = pytorch_sdpa(q, k, v, attn_mask=mask, scale=scale, enable_gqa=enable_gqa)
    except RuntimeError:
        return by_hand()
    return by_hand() if out.isnan().any() else out


def each_cached_sequence(fn, cache_seqlens):
    """The reference for kv_cache_attention: fn on each sequence alone with
    the first cache_seqlens[b] keys of its cache, bottom-right aligned, the
    outputs stacked again; ALiBi slopes of shape (B, Hq) go to their
    sequence. Called as check_features calls its functions; with
    return_lse=True, fn returns (out, lse) and so does this."""

    def cached(query, key_cache, value_cache, attn_mask=None, is_causal=True, alibi_slopes=None, **kwargs):
        assert attn_mask is None
        results = []
        for b, used in enumerate(cache_seqlens):
            slopes = alibi_slopes[b] if alibi_slopes is not None and alibi_slopes.dim() == 2 else alibi_slopes
            results.append(fn(query[b:b + 1], key_cache[b:b + 1, :, :used], value_cache[b:b + 1, :, :used],
                              is_causal=is_causal, causal_alignment="bottom_right", enable_gqa=True,
                              alibi_slopes=slopes, **kwargs))
        if kwargs.get("return_lse"):
            return tuple(torch.cat(parts) for parts in zip(*results))
        return torch.cat(results)

    return cached


def random_output_gradient(q, v, seed=0):
    shape = (*q.shape[:-1], v.shape[-1])
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(q.device, q.dtype)


def check_features(q, k, v, attn_mask=None, *, ours_fn=ours, pytorch_fn=pytorch_with_explicit_rules,
                   reference_fn=explicit_attention, **kwargs):
    """reference.check_against_reference for the extras: ours,
    PyTorch's explicit-mask attention in the inputs' dtype and the float64
    explicit reference, on the same inputs and output gradient; the dtype
    rule for the output and every gradient. The three functions take
    (q, k, v, attn_mask=..., **kwargs). Returns ours."""
    grad_out = random_output_gradient(q, v)
    with poisoned_outputs():
        got = run_attention(ours_fn, q, k, v, attn_mask, grad_out, **kwargs)
    pytorch = run_attention(pytorch_fn, q, k, v, attn_mask, grad_out, **kwargs)
    kwargs64 = {**kwargs, "alibi_slopes": as_float64(kwargs.get("alibi_slopes"))}
    expected = run_attention(reference_fn, *map(as_float64, (q, k, v, attn_mask, grad_out)), **kwargs64)
    assert_results_within_dtype_rule(got, pytorch, expected)
    return got
