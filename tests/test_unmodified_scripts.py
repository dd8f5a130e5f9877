"""Unmodified training code under patch_sdpa(): a nanoGPT-style GPT and a
timm-style ViT block, written as their authors write them (calling
torch.nn.functional.scaled_dot_product_attention), trained for a few AdamW
steps. Every step's loss and every gradient follow the float32 rule against
the same training in float64: our error at most twice PyTorch's own in
float32, plus rounding. Eager mode and torch.compile."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torch_selfattn
from helpers.models import CausalSelfAttention  # nanoGPT's attention block, as written there
from helpers.reference import assert_within_dtype_rule

# --------------------------------------------------------------------------
# The scripts' models, as their authors write them.


class MLP(nn.Module):
    def __init__(self, n_embd, dropout):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class GPTBlock(nn.Module):
    def __init__(self, n_embd, n_head, dropout):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd, dropout)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size=50, block_size=32, n_layer=2, n_head=4, n_embd=32, dropout=0.0):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd),
            wpe=nn.Embedding(block_size, n_embd),
            drop=nn.Dropout(dropout),
            h=nn.ModuleList([GPTBlock(n_embd, n_head, dropout) for _ in range(n_layer)]),
            ln_f=nn.LayerNorm(n_embd),
        ))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets):
        pos = torch.arange(0, idx.size(1), dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


class Attention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.Identity()
        self.k_norm = nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class ViTBlock(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.ls1 = nn.Identity()
        self.drop_path1 = nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))
        self.ls2 = nn.Identity()
        self.drop_path2 = nn.Identity()

    def forward(self, x):
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class ViTBlockTask(nn.Module):
    """The block on patch tokens with a regression loss, as a training script would use it."""

    def __init__(self):
        super().__init__()
        self.block = ViTBlock(dim=48, num_heads=3)

    def forward(self, tokens, targets):
        return F.mse_loss(self.block(tokens), targets)


# --------------------------------------------------------------------------


def gpt_batches(dtype):
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 50, (4, 32), generator=g), torch.randint(0, 50, (4, 32), generator=g))
            for _ in range(3)]


def vit_batches(dtype):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 17, 48, generator=g).to(dtype), torch.randn(4, 17, 48, generator=g).to(dtype))
            for _ in range(3)]


MODELS = {"nanogpt": (GPT, gpt_batches), "vit_block": (ViTBlockTask, vit_batches)}


def train(model, batches, step_fn=None):
    """Losses of every AdamW step and the gradients of every step, by name."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step_fn = model if step_fn is None else step_fn
    losses, grads = [], []
    for inputs, targets in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = step_fn(inputs, targets)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        optimizer.step()
    return losses, grads


def ops_called(fn):
    with torch.autograd.profiler.profile() as prof:
        result = fn()
    return result, {e.name for e in prof.function_events}


def check_training(name, compiled):
    make, batches = MODELS[name]
    torch.manual_seed(0)
    model = make()
    reference_model = copy.deepcopy(model).double()
    pytorch_model = copy.deepcopy(model)
    expected = train(reference_model, batches(torch.float64))
    pytorch = train(pytorch_model, batches(torch.float32))
    with torch_selfattn.patch_sdpa():
        step_fn = torch.compile(model) if compiled else None
        ours, names = ops_called(lambda: train(model, batches(torch.float32), step_fn))
    assert "selfattn::attention_forward" in names and "selfattn::attention_backward" in names, sorted(names)
    for step, (got_loss, pt_loss, ref_loss) in enumerate(zip(ours[0], pytorch[0], expected[0])):
        assert_within_dtype_rule(f"loss at step {step}", got_loss, pt_loss, ref_loss)
    for step, (got, pt, ref) in enumerate(zip(ours[1], pytorch[1], expected[1])):
        for param in ref:
            assert_within_dtype_rule(f"step {step}, grad {param}", got[param], pt[param], ref[param])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_steps_in_eager_mode(name):
    check_training(name, compiled=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_steps_under_torch_compile(name):
    torch._dynamo.reset()
    check_training(name, compiled=True)
