"""A small character-level GPT built from MultiheadSelfAttention."""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch_selfattn.multihead_self_attention import MultiheadSelfAttention


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    block_size: int = 128
    layers: int = 4
    heads: int = 4
    embed_dim: int = 128


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then an MLP."""

    def __init__(self, config, attention_fn):
        super().__init__()
        dim = config.embed_dim
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = MultiheadSelfAttention(dim, config.heads, is_causal=True, attention_fn=attention_fn)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """Token and learned position embeddings, transformer blocks, and a
    language-model head tied to the token embedding.

    ``attention_fn`` is the SDPA function every block calls (torch-selfattn's
    by default), so one set of weights can be run on either implementation.
    """

    def __init__(self, config, attention_fn=None):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.embed_dim)
        self.position_embedding = nn.Embedding(config.block_size, config.embed_dim)
        self.blocks = nn.ModuleList(Block(config, attention_fn) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.embed_dim)
        self.head = nn.Linear(config.embed_dim, config.vocab_size, bias=False)
        self.head.weight = self.token_embedding.weight
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens, targets=None):
        """Logits (B, L, vocab); with targets, the mean cross-entropy too."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x))
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    @torch.no_grad()
    def generate(self, tokens, count, generator=None):
        """Appends count sampled tokens to tokens (B, L)."""
        for _ in range(count):
            logits = self(tokens[:, -self.config.block_size:])[:, -1]
            probs = torch.softmax(logits.float(), dim=-1)
            tokens = torch.cat([tokens, torch.multinomial(probs, 1, generator=generator)], dim=1)
        return tokens
