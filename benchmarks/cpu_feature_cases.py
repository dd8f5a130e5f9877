"""The features beyond PyTorch's SDPA on the CPU (``bench_cpu.py --features``),
each timed against the best that PyTorch offers for the same job, on the
same inputs, in one process:

- sliding window (causal, each query sees its last w keys): ours with
  ``window=`` against SDPA with an explicit boolean band mask and against
  FlexAttention with a block mask (compiled, as it needs on the CPU; it has
  no CPU backward, so its forward only);
- packed variable-length batches: ours with ``varlen_attention`` against SDPA
  on the zero-padded batch with a padding mask, and SDPA looped over the
  sequences (no padding, one call each);
- KV-cache decoding (one new token against a cache of S): ours with
  ``kv_cache_attention`` against SDPA on the same cache.

GFLOP/s count only the useful work (4·E·(visible query-key pairs) per head
forward, 2.5× that backward, as FlashAttention counts): the scores inside the
band, the real tokens of each sequence. Decoding is bound by memory, so its
table also gives GB/s of the cache read, against a large tensor sum measured
in the same run.
"""
import random

import torch
import torch.nn.functional as F

import torch_selfattn
from torch_selfattn._cli.timing import median_seconds


def randn(*shape, dtype=torch.float32, generator=None, grad=True):
    return torch.randn(*shape, generator=generator).to(dtype).requires_grad_(grad)


def forward_and_backward(fn):
    """Timed closures: fn's forward without autograd, and forward+backward."""

    def forward():
        with torch.no_grad():
            fn()

    def both():
        out = fn()
        out.backward(torch.ones_like(out))

    return forward, both


def gflops(flops, seconds):
    return flops / seconds / 1e9


def ratio_to_best(ours, others):
    """Our speed over the fastest of the others' (times in seconds, None where
    one could not run)."""
    best = min(t for t in others if t is not None)
    return best / ours


def cell(flops, seconds):
    return "n/a" if seconds is None else f"{gflops(flops, seconds):.1f}"


# ---------------------------------------------------------------------------
# Sliding window

def band_pairs(L, w):
    """Query-key pairs a causal window of w keys leaves: Σ_i min(i + 1, w)."""
    return sum(min(i + 1, w) for i in range(L))


def flex_band(q, k, v, w):
    """FlexAttention's forward with a causal band block mask, compiled; or the
    reason it cannot run here."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        def band(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & (q_idx - kv_idx < w)

        L = q.shape[-2]
        block_mask = create_block_mask(band, B=None, H=None, Q_LEN=L, KV_LEN=L, device="cpu")
        compiled = torch.compile(flex_attention, dynamic=False)
        q, k, v = (t.detach() for t in (q, k, v))
        compiled(q, k, v, block_mask=block_mask)  # compile outside the timing
        return lambda: compiled(q, k, v, block_mask=block_mask), None
    except Exception as error:  # noqa: BLE001 - the table says why
        return None, f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"


def window_rows(repeats, peak, configs):
    lines = [
        "## Sliding window (causal, each query sees its last w keys)",
        "",
        "PyTorch's best: SDPA with an explicit L×L boolean band mask (O(L²) work), or FlexAttention with a block "
        "mask (torch.compile; forward only, it has no CPU backward).",
        "",
        "| config | fwd ours GFLOP/s | fwd SDPA+mask | fwd Flex | fwd ratio (vs best) | fwd % of mm peak "
        "| fwd+bwd ours | fwd+bwd SDPA+mask | fwd+bwd ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    notes = []
    for dtype, heads, L, w, E in configs:
        g = torch.Generator().manual_seed(0)
        q, k, v = (randn(1, heads, L, E, dtype=dtype, generator=g) for _ in range(3))
        i = torch.arange(L)
        band = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < w)
        ours = forward_and_backward(
            lambda: torch_selfattn.scaled_dot_product_attention(q, k, v, is_causal=True, window=(w - 1, -1)))
        masked = forward_and_backward(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=band))
        flex, why = flex_band(q, k, v, w)
        if why and why not in notes:
            notes.append(why)
        fwd_fns = [ours[0], masked[0]] + ([flex] if flex else [])
        fwd = median_seconds(fwd_fns, repeats) + ([] if flex else [None])
        fb = median_seconds([ours[1], masked[1]], repeats)
        flops = 4 * heads * E * band_pairs(L, w)
        row = (
            f"| {str(dtype).replace('torch.', '')} B1 H{heads} L{L} w{w} E{E} | {cell(flops, fwd[0])} "
            f"| {cell(flops, fwd[1])} | {cell(flops, fwd[2])} | {ratio_to_best(fwd[0], fwd[1:]):.2f}× "
            f"| {100 * gflops(flops, fwd[0]) / peak[dtype]:.0f}% | {cell(3.5 * flops, fb[0])} "
            f"| {cell(3.5 * flops, fb[1])} | {fb[1] / fb[0]:.2f}× |"
        )
        lines.append(row)
        print(row, flush=True)
    if notes:
        lines += ["", "FlexAttention could not run: " + "; ".join(notes)]
        print(lines[-1], flush=True)
    return lines


# ---------------------------------------------------------------------------
# Packed variable-length batches

def draw_lengths(count, low=64, high=2048, seed=0):
    rng = random.Random(seed)
    return [rng.randint(low, high) for _ in range(count)]


def causal_pairs(lengths, causal):
    return sum(n * (n + 1) // 2 if causal else n * n for n in lengths)


def padded(packed, lengths, offsets):
    """(total, H, E) → (sequences, H, L_max, E), zero rows as padding."""
    out = packed.new_zeros(len(lengths), packed.shape[1], max(lengths), packed.shape[2])
    for s, n in enumerate(lengths):
        out[s, :, :n] = packed[offsets[s]:offsets[s] + n].transpose(0, 1)
    return out


def padding_mask(lengths, causal):
    """(sequences, 1, L_max, L_max) bool: real keys (and causal) only. Padded
    query rows see their own key, so that no row is fully masked."""
    L = max(lengths)
    i = torch.arange(L)
    real = i[None, :] < torch.tensor(lengths)[:, None]
    mask = real[:, None, None, :] | (i[:, None] == i[None, :])
    if causal:
        mask = mask & (i[:, None] >= i[None, :])
    return mask


def varlen_rows(repeats, peak, configs):
    lines = [
        "",
        "## Packed variable-length batches (lengths drawn uniformly from 64..2048)",
        "",
        "PyTorch's best: SDPA on the zero-padded batch with a padding mask, or SDPA looped over the sequences "
        "(no padding; its flash kernel with is_causal). The padded batch is built outside the timing.",
        "",
        "| config | tokens (padded) | fwd ours GFLOP/s | fwd SDPA padded | fwd SDPA loop | fwd ratio (vs best) "
        "| fwd % of mm peak | fwd+bwd ours | fwd+bwd SDPA padded | fwd+bwd SDPA loop | fwd+bwd ratio (vs best) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for dtype, count, heads, E, causal in configs:
        lengths = draw_lengths(count)
        total = sum(lengths)
        offsets = [0]
        for n in lengths:
            offsets.append(offsets[-1] + n)
        cu = torch.tensor(offsets, dtype=torch.int32)
        g = torch.Generator().manual_seed(0)
        q, k, v = (randn(total, heads, E, dtype=dtype, generator=g) for _ in range(3))
        qp, kp, vp = (padded(t.detach(), lengths, offsets).requires_grad_() for t in (q, k, v))
        mask = padding_mask(lengths, causal)

        def loop():
            # 4-D views: on 3-D inputs PyTorch's CPU dispatch takes its math path, 10x slower.
            return torch.cat([
                F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1)[None] for t in (q, k, v)), is_causal=causal)
                for a, b in zip(offsets, offsets[1:])], dim=2)

        fns = [
            forward_and_backward(lambda: torch_selfattn.varlen_attention(
                q, k, v, cu, cu, max(lengths), max(lengths), is_causal=causal)),
            forward_and_backward(lambda: F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask)),
            forward_and_backward(loop),
        ]
        fwd = median_seconds([f[0] for f in fns], repeats)
        fb = median_seconds([f[1] for f in fns], repeats)
        flops = 4 * heads * E * causal_pairs(lengths, causal)
        label = f"{str(dtype).replace('torch.', '')} {count} seqs H{heads} E{E}" + (" causal" if causal else "")
        row = (
            f"| {label} | {total} ({count * max(lengths)}) | {cell(flops, fwd[0])} | {cell(flops, fwd[1])} "
            f"| {cell(flops, fwd[2])} | {ratio_to_best(fwd[0], fwd[1:]):.2f}× "
            f"| {100 * gflops(flops, fwd[0]) / peak[dtype]:.0f}% | {cell(3.5 * flops, fb[0])} "
            f"| {cell(3.5 * flops, fb[1])} | {cell(3.5 * flops, fb[2])} | {ratio_to_best(fb[0], fb[1:]):.2f}× |"
        )
        lines.append(row)
        print(row, flush=True)
    return lines


# ---------------------------------------------------------------------------
# KV-cache decoding

def memory_peak_gbs(repeats=5, megabytes=1024):
    """GB/s of a sum over a large float32 tensor: the memory bandwidth the
    decoding step could hope for."""
    x = torch.randn(megabytes * 2**20 // 4)
    (seconds,) = median_seconds([x.sum], repeats)
    return x.numel() * 4 / seconds / 1e9


def decode_rows(repeats, peak, configs):
    bandwidth = memory_peak_gbs()
    lines = [
        "",
        "## KV-cache decoding (one new token per sequence, full caches)",
        "",
        f"PyTorch's best: SDPA on the same cache (enable_gqa). Memory peak (sum of 1 GiB, same run): "
        f"{bandwidth:.1f} GB/s. With 2 threads the keys split across the cores (split-KV) only where the "
        "(sequence, head) pairs are fewer than 4.",
        "",
        "| config | ours GFLOP/s | SDPA GFLOP/s | ratio | ours GB/s of cache read | % of memory peak |",
        "|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for dtype, batch, q_heads, kv_heads, S, E in configs:
        g = torch.Generator().manual_seed(0)
        q = randn(batch, q_heads, 1, E, dtype=dtype, generator=g, grad=False)
        k, v = (randn(batch, kv_heads, S, E, dtype=dtype, generator=g, grad=False) for _ in range(2))
        used = torch.full((batch,), S, dtype=torch.int32)
        ours, theirs = median_seconds([
            lambda: torch_selfattn.kv_cache_attention(q, k, v, used),
            lambda: F.scaled_dot_product_attention(q, k, v, is_causal=False, enable_gqa=True),
        ], repeats)
        flops = 4 * batch * q_heads * S * E
        cache_bytes = 2 * batch * kv_heads * S * E * k.element_size()
        row = (
            f"| {str(dtype).replace('torch.', '')} B{batch} Hq{q_heads} H{kv_heads} S{S} E{E} "
            f"| {gflops(flops, ours):.1f} | {gflops(flops, theirs):.1f} | {theirs / ours:.2f}× "
            f"| {cache_bytes / ours / 1e9:.1f} | {100 * cache_bytes / ours / 1e9 / bandwidth:.0f}% |"
        )
        lines.append(row)
        print(row, flush=True)
    return lines


def default_configs(quick):
    """(window, varlen, decode) configurations."""
    if quick:
        return ([(torch.float32, 4, 2048, 256, 64)], [(torch.float32, 4, 8, 64, True)],
                [(torch.float32, 1, 8, 2, 4096, 128)])
    window = [(torch.float32, 4, L, w, 64) for L in (4096, 8192, 16384) for w in (256, 1024)]
    window.append((torch.bfloat16, 4, 8192, 1024, 64))
    varlen = [(torch.float32, 8, 8, 64, True), (torch.float32, 8, 8, 64, False), (torch.float32, 32, 8, 64, True),
              (torch.bfloat16, 8, 8, 64, True)]
    decode = [(dtype, batch, 32, 8, S, 128) for dtype in (torch.float32, torch.bfloat16) for batch in (1, 4)
              for S in (8192, 32768)]
    decode += [(torch.float32, 1, 2, 2, 32768, 128)]
    return window, varlen, decode


def feature_tables(repeats, peak, quick=False):
    window, varlen, decode = default_configs(quick)
    return window_rows(repeats, peak, window) + varlen_rows(repeats, peak, varlen) + decode_rows(repeats, peak, decode)
