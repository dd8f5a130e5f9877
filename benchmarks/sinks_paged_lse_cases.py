"""Attention sinks, paged KV caches and the logsumexp's gradient on the CPU
(``bench_cpu.py --features``), each against what a user has without them, on
the same inputs, in one process:

- sinks: ours with ``sinks=`` against the explicit extra column of the
  scores (Hugging Face's GPT-OSS eager attention: concatenate, softmax, drop
  the column), and against our own call without sinks (what they cost);
- paged decoding: one new token against a paged cache of blocks of 16 and
  256 rows, against the same keys in a contiguous cache (the target: within
  10% of it);
- one block of ring attention: the gradient of a block's (output,
  logsumexp) through the core backward with ``grad_logsumexp``, against the
  way ring attention had to take it before (one forward with values [V | K]
  and one backward with values [V | 0]), both against the block's plain
  forward+backward.
"""
import torch

import torch_selfattn
from torch_selfattn._cli.timing import median_seconds

ops = torch.ops.selfattn


def randn(*shape, dtype=torch.float32, generator=None, grad=False):
    return torch.randn(*shape, generator=generator).to(dtype).requires_grad_(grad)


def forward_and_backward(fn, leaves):
    """Timed closures: fn's forward without autograd, and forward+backward."""

    def forward():
        with torch.no_grad():
            fn()

    def both():
        out = fn()
        torch.autograd.grad(out, leaves, torch.ones_like(out))

    return forward, both


def name(dtype):
    return str(dtype).replace("torch.", "")


def table_head(title, description, columns):
    """The lines that open a table, printed as they are made."""
    lines = ["", f"## {title}", "", description, "", "| " + " | ".join(columns) + " |",
             "|" + "---|" * len(columns)]
    print("\n".join(lines), flush=True)
    return lines


# ---------------------------------------------------------------------------
# Attention sinks

def explicit_sink_column(q, k, v, sinks, scale):
    """GPT-OSS's eager attention in Hugging Face: the sinks as one more column."""
    scores = (q @ k.transpose(-2, -1)) * scale
    L, S = scores.shape[-2:]
    causal = torch.ones(L, S, dtype=torch.bool).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    column = sinks.view(1, -1, 1, 1).expand(*scores.shape[:-1], 1).to(scores.dtype)
    probs = torch.softmax(torch.cat([scores, column], -1), dim=-1)[..., :-1]
    return probs @ v


def sink_rows(repeats, configs):
    lines = table_head(
        "Attention sinks (causal, one sink logit per head, with gradients)",
        "Against the explicit sink column (Hugging Face's GPT-OSS eager attention: an L×(S+1) score matrix) and "
        "against our own call without sinks.",
        ["config", "fwd ours ms", "fwd explicit column ms", "fwd ratio", "fwd without sinks ms", "fwd sink cost",
         "fwd+bwd ours ms", "fwd+bwd explicit ms", "fwd+bwd ratio", "fwd+bwd without sinks ms", "fwd+bwd sink cost"])
    for dtype, heads, L, E in configs:
        g = torch.Generator().manual_seed(0)
        q, k, v = (randn(1, heads, L, E, dtype=dtype, generator=g, grad=True) for _ in range(3))
        sinks = randn(heads, generator=g, grad=True)
        leaves = (q, k, v, sinks)
        fns = [
            forward_and_backward(lambda: torch_selfattn.scaled_dot_product_attention(
                q, k, v, is_causal=True, sinks=sinks), leaves),
            forward_and_backward(lambda: explicit_sink_column(q, k, v, sinks, E ** -0.5), leaves),
            forward_and_backward(lambda: torch_selfattn.scaled_dot_product_attention(q, k, v, is_causal=True),
                                 leaves[:3]),
        ]
        fwd = median_seconds([f[0] for f in fns], repeats)
        fb = median_seconds([f[1] for f in fns], repeats)
        row = (
            f"| {name(dtype)} B1 H{heads} L{L} E{E} | {1e3 * fwd[0]:.1f} | {1e3 * fwd[1]:.1f} | {fwd[1] / fwd[0]:.2f}× "
            f"| {1e3 * fwd[2]:.1f} | {100 * (fwd[0] / fwd[2] - 1):+.0f}% | {1e3 * fb[0]:.1f} | {1e3 * fb[1]:.1f} "
            f"| {fb[1] / fb[0]:.2f}× | {1e3 * fb[2]:.1f} | {100 * (fb[0] / fb[2] - 1):+.0f}% |"
        )
        lines.append(row)
        print(row, flush=True)
    return lines


# ---------------------------------------------------------------------------
# Paged decoding

def paged_copy(key, value, block_size, generator):
    """The contiguous (B, H, S, E) caches as blocks (num_blocks, block_size,
    H, E) in a random order, and the block table."""
    B, H, S, _ = key.shape
    per_sequence = S // block_size
    order = torch.randperm(B * per_sequence, generator=generator)
    table = order.view(B, per_sequence).to(torch.int32)

    def blocks(t):
        paged = torch.empty(B * per_sequence, block_size, H, t.shape[-1], dtype=t.dtype)
        paged[order] = t.transpose(1, 2).reshape(B * per_sequence, block_size, H, t.shape[-1])
        return paged

    return blocks(key), blocks(value), table


PAGED_DESCRIPTION = (
    "Against the same keys in a contiguous cache (our kv_cache_attention without block_table), in both layouts: "
    "head-major (B, H, S, E), our default, and token-major (B, S, H, E), the layout of the blocks themselves "
    "(each key row holds every head). Target: within 10%, ratio ≥ 0.90×.")


def paged_rows(repeats, configs):
    lines = table_head(
        "Paged KV-cache decoding (one new token per sequence, full caches, blocks in a random order)",
        PAGED_DESCRIPTION,
        ["config", "block_size", "paged ms", "contiguous head-major ms", "ratio", "contiguous token-major ms",
         "ratio"])
    for dtype, batch, q_heads, kv_heads, S, E, block_size in configs:
        g = torch.Generator().manual_seed(0)
        q = randn(batch, q_heads, 1, E, dtype=dtype, generator=g)
        k, v = (randn(batch, kv_heads, S, E, dtype=dtype, generator=g) for _ in range(2))
        k_tokens, v_tokens = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (k, v))
        key_blocks, value_blocks, table = paged_copy(k, v, block_size, g)
        used = torch.full((batch,), S, dtype=torch.int32)
        paged, heads_first, tokens_first = median_seconds([
            lambda: torch_selfattn.kv_cache_attention(q, key_blocks, value_blocks, used, block_table=table),
            lambda: torch_selfattn.kv_cache_attention(q, k, v, used),
            lambda: torch_selfattn.kv_cache_attention(q, k_tokens, v_tokens, used),
        ], repeats)
        row = (
            f"| {name(dtype)} B{batch} Hq{q_heads} H{kv_heads} S{S} E{E} | {block_size} | {1e3 * paged:.2f} "
            f"| {1e3 * heads_first:.2f} | {heads_first / paged:.2f}× | {1e3 * tokens_first:.2f} "
            f"| {tokens_first / paged:.2f}× |"
        )
        lines.append(row)
        print(row, flush=True)
    return lines


# ---------------------------------------------------------------------------
# One block of ring attention

def block_backward_by_widened_values(q, k, v, grad_out, grad_lse, scale):
    """The logsumexp's gradient as ring attention took it before the core
    backward had grad_logsumexp: γ·P added to dS through values [V | K] in a
    forward and [V | 0] in a backward (the docstring of the old blocks.py)."""
    both, lse, rng = ops.attention_forward(q, k, torch.cat([v, k], -1), None, 0.0, False, scale)
    out, probs_key = both.split([v.shape[-1], k.shape[-1]], -1)
    lse_term = (scale * grad_lse).unsqueeze(-1)
    grads = ops.attention_backward(
        torch.cat([grad_out, lse_term * q], -1).to(q.dtype), q, k, torch.cat([v, torch.zeros_like(k)], -1), None,
        torch.cat([out, torch.zeros_like(probs_key)], -1), lse, rng, 0.0, False, scale, False)
    grad_value, grad_key_from_lse = grads[2].split([v.shape[-1], k.shape[-1]], -1)
    return grads[0] + lse_term * probs_key, grads[1] + grad_key_from_lse, grad_value


def block_backward_by_lse_gradient(q, k, v, grad_out, grad_lse, scale):
    out, lse, rng = ops.attention_forward(q, k, v, None, 0.0, False, scale)
    return ops.attention_backward(grad_out, q, k, v, None, out, lse, rng, 0.0, False, scale, False, grad_lse)[:3]


def ring_block_rows(repeats, configs):
    lines = table_head(
        "The logsumexp's gradient: one block of ring attention's backward",
        "A block's backward recomputes its forward and takes the gradients of its output and logsumexp. Before: one "
        "forward with values [V | K] and one backward with values [V | 0]. Now: one forward and one backward with "
        "grad_logsumexp. Both against the block's plain forward+backward (the rows' 'cost').",
        ["config", "plain fwd+bwd ms", "before: widened values ms", "before cost", "now: grad_logsumexp ms",
         "now cost", "speed-up"])
    for dtype, heads, L, E in configs:
        g = torch.Generator().manual_seed(0)
        q, k, v = (randn(1, heads, L, E, dtype=dtype, generator=g, grad=True) for _ in range(3))
        grad_out = randn(1, heads, L, E, dtype=dtype, generator=g)
        grad_lse = randn(1, heads, L, generator=g)
        scale = E ** -0.5

        def plain():
            out = torch_selfattn.scaled_dot_product_attention(q, k, v)
            torch.autograd.grad(out, (q, k, v), grad_out)

        detached = [t.detach() for t in (q, k, v)]
        before, now = (lambda: block_backward_by_widened_values(*detached, grad_out, grad_lse, scale),
                       lambda: block_backward_by_lse_gradient(*detached, grad_out, grad_lse, scale))
        for a, b in zip(before(), now()):
            torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)
        t_plain, t_before, t_now = median_seconds([plain, before, now], repeats)
        row = (
            f"| {name(dtype)} B1 H{heads} L{L} E{E} | {1e3 * t_plain:.1f} | {1e3 * t_before:.1f} "
            f"| {t_before / t_plain:.2f}× | {1e3 * t_now:.1f} | {t_now / t_plain:.2f}× | {t_before / t_now:.2f}× |"
        )
        lines.append(row)
        print(row, flush=True)
    return lines


def default_configs(quick):
    """(sinks, paged, ring block) configurations."""
    if quick:
        return ([(torch.float32, 4, 512, 64)], [(torch.float32, 1, 8, 2, 4096, 128, 16)],
                [(torch.float32, 4, 512, 64)])
    sinks = [(torch.float32, 8, 2048, 64), (torch.bfloat16, 8, 2048, 64)]
    paged = [(dtype, batch, 32, 8, 8192, 128, block) for dtype in (torch.float32, torch.bfloat16)
             for batch in (1, 4) for block in (16, 256)]
    ring = [(torch.float32, 8, 1024, 64), (torch.float32, 8, 2048, 64), (torch.bfloat16, 8, 2048, 64)]
    return sinks, paged, ring


def feature_tables(repeats, quick=False):
    sinks, paged, ring = default_configs(quick)
    return sink_rows(repeats, sinks) + paged_rows(repeats, paged) + ring_block_rows(repeats, ring)
