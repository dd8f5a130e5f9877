"""MultiheadSelfAttention: learned projections around torch-selfattn's kernels."""
import torch
import torch.nn as nn

from torch_selfattn.attention_maps import attention_weights
from torch_selfattn.functional import scaled_dot_product_attention


class MultiheadSelfAttention(nn.Module):
    r"""Multi-head self-attention on (batch, length, embed_dim) inputs.

    One fused linear layer projects the input to queries, keys and values (all
    three come from the same input, so their weights stack into one matrix
    whatever the head counts); the heads attend with
    :func:`torch_selfattn.scaled_dot_product_attention`; a second linear layer
    projects the concatenated heads back to ``embed_dim``.

    Args:
        embed_dim: model width D, a multiple of ``num_heads``.
        num_heads: query heads; the head dim is ``embed_dim // num_heads``.
        num_kv_heads: key/value heads for grouped-query (or, with 1,
            multi-query) attention; a divisor of ``num_heads``. Default: ``num_heads``.
        is_causal: each position attends only to itself and earlier positions,
            the ``is_causal`` of the functions. ``causal=`` is accepted as the
            same option under its earlier name.
        dropout: probability of dropping an attention weight, applied in
            training mode only (``module.train()``); eval mode never drops.
        bias: whether the projections have biases.
        attention_fn: the SDPA function the heads call, with the signature of
            ``torch.nn.functional.scaled_dot_product_attention``. Defaults to
            torch-selfattn's; pass PyTorch's to run the very same module on it
            (for comparisons).

    ``forward(x, attn_mask=None)`` takes x of shape (B, L, D) and an optional
    mask broadcastable to (B, num_heads, L, L): bool (True = attend) or float
    (added to the scores). With ``is_causal=True`` the mask is combined with
    the causal one. Returns (B, L, D).
    """

    def __init__(self, embed_dim, num_heads, num_kv_heads=None, is_causal=False, dropout=0.0, bias=True, *,
                 causal=None, attention_fn=None, device=None, dtype=None):
        super().__init__()
        if causal is not None:
            if is_causal and not causal:
                raise ValueError("MultiheadSelfAttention: is_causal=True and causal=False contradict each other; "
                                 "causal is another name for is_causal, give one")
            is_causal = causal
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads < 1 or embed_dim % num_heads:
            raise ValueError(f"MultiheadSelfAttention: embed_dim ({embed_dim}) must be a positive multiple of "
                             f"num_heads ({num_heads})")
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(f"MultiheadSelfAttention: num_kv_heads ({num_kv_heads}) must divide num_heads "
                             f"({num_heads})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MultiheadSelfAttention: dropout must be in [0, 1), got {dropout}")
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.is_causal, self.dropout = is_causal, dropout
        self.attention_fn = scaled_dot_product_attention if attention_fn is None else attention_fn
        factory = dict(device=device, dtype=dtype)
        self.qkv_proj = nn.Linear(embed_dim, (num_heads + 2 * num_kv_heads) * self.head_dim, bias=bias, **factory)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)

    def extra_repr(self):
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
                f"is_causal={self.is_causal}, dropout={self.dropout}")

    @property
    def causal(self):
        """is_causal, under the module's earlier name."""
        return self.is_causal

    @causal.setter
    def causal(self, value):
        self.is_causal = value

    def _heads(self, x):
        """Queries (B, num_heads, L, head_dim), keys and values (B, num_kv_heads,
        L, head_dim): strided views of the fused projection, which the kernels
        read in place."""
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"MultiheadSelfAttention: input must be (batch, length, {self.embed_dim}), "
                             f"got {tuple(x.shape)}")
        B, L, _ = x.shape
        sizes = [self.num_heads * self.head_dim] + [self.num_kv_heads * self.head_dim] * 2
        q, k, v = self.qkv_proj(x).split(sizes, dim=-1)
        return [t.view(B, L, -1, self.head_dim).transpose(1, 2) for t in (q, k, v)]

    def _mask(self, attn_mask, length, device):
        """(mask, is_causal) for the SDPA call, which takes one or the other:
        with both, the causal pattern is folded into the mask."""
        if attn_mask is None or not self.is_causal:
            return attn_mask, attn_mask is None and self.is_causal
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        if attn_mask.dtype == torch.bool:
            return attn_mask & causal, False
        return attn_mask.masked_fill(~causal, float("-inf")), False

    def forward(self, x, attn_mask=None):
        q, k, v = self._heads(x)
        mask, is_causal = self._mask(attn_mask, x.shape[1], x.device)
        y = self.attention_fn(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                              is_causal=is_causal, enable_gqa=self.num_kv_heads != self.num_heads)
        return self.out_proj(y.transpose(1, 2).reshape(x.shape))

    def attention_weights(self, x, attn_mask=None, heads=None, rows=None):
        """The attention probabilities of this layer for input x, for the
        chosen heads and query rows: see :func:`torch_selfattn.attention_weights`.
        Shape (B, heads, rows, L)."""
        q, k, _ = self._heads(x)
        mask, is_causal = self._mask(attn_mask, x.shape[1], x.device)
        return attention_weights(q, k, attn_mask=mask, is_causal=is_causal, heads=heads, rows=rows)
