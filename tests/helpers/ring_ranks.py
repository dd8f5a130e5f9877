"""What the ranks run in tests/test_ring_attention.py, and how they are
started: one group of processes per world size, on gloo, that runs every
case and leaves its results in a file for the test process to check.

Everything here is deterministic from the case's seed, so that the test
process can rebuild the very inputs and model the ranks used.
"""
import datetime
import os
import sys
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

# One case of attention on a full sequence of length `length`: the ranks
# shard it (zig-zag when causal, contiguous chunks otherwise), run
# ring_attention forward and backward, and gather output and gradients back.
CASES = {
    "fp32": dict(dtype=torch.float32, is_causal=False, heads=(4, 4), length=96, dims=(32, 32)),
    "fp32_causal": dict(dtype=torch.float32, is_causal=True, heads=(4, 4), length=96, dims=(32, 32)),
    # Several kernel tiles per block, GQA, Ev != E.
    "fp32_causal_gqa_long": dict(dtype=torch.float32, is_causal=True, heads=(6, 2), length=512, dims=(16, 24)),
    "fp64_causal_scale": dict(dtype=torch.float64, is_causal=True, heads=(2, 2), length=64, dims=(8, 8), scale=0.3),
    "bf16": dict(dtype=torch.bfloat16, is_causal=False, heads=(4, 4), length=128, dims=(64, 64)),
    "bf16_causal_gqa": dict(dtype=torch.bfloat16, is_causal=True, heads=(4, 2), length=128, dims=(64, 64)),
    "fp16_causal": dict(dtype=torch.float16, is_causal=True, heads=(2, 2), length=64, dims=(32, 32)),
}
BATCH = 2


def case_inputs(name):
    """(query, key, value, grad_out) of the full sequence, and the kwargs
    of attention."""
    case = CASES[name]
    (q_heads, kv_heads), (dim, value_dim), length = case["heads"], case["dims"], case["length"]
    g = torch.Generator().manual_seed(sorted(CASES).index(name))

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(case["dtype"])

    tensors = (randn(BATCH, q_heads, length, dim), randn(BATCH, kv_heads, length, dim),
               randn(BATCH, kv_heads, length, value_dim), randn(BATCH, q_heads, length, value_dim))
    kwargs = dict(is_causal=case["is_causal"], scale=case.get("scale"), enable_gqa=q_heads != kv_heads)
    return tensors, kwargs


# ---- a small causal language model, trained for a few steps -------------------------

VOCAB, DIM, HEADS, KV_HEADS, SEQ_LEN, TRAIN_STEPS, LR = 50, 32, 4, 2, 64, 3, 0.1


class TinyLM(nn.Module):
    """Token and position embeddings, one pre-norm block with grouped-query
    causal attention and an MLP, and a head. ``attend(q, k, v)`` is the
    attention: full-sequence SDPA on one process, ring_attention on shards."""

    def __init__(self, attend):
        super().__init__()
        self.attend = attend
        self.tokens, self.positions = nn.Embedding(VOCAB, DIM), nn.Embedding(SEQ_LEN, DIM)
        self.norm1, self.norm2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.head_dim = DIM // HEADS
        self.q_proj = nn.Linear(DIM, DIM)
        self.kv_proj = nn.Linear(DIM, 2 * KV_HEADS * self.head_dim)
        self.out_proj = nn.Linear(DIM, DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, 4 * DIM), nn.GELU(), nn.Linear(4 * DIM, DIM))
        self.lm_head = nn.Linear(DIM, VOCAB)

    def forward(self, tokens, positions):
        x = self.tokens(tokens) + self.positions(positions)
        h = self.norm1(x)
        B, L, _ = h.shape
        q = self.q_proj(h).view(B, L, HEADS, self.head_dim).transpose(1, 2)
        k, v = self.kv_proj(h).view(B, L, 2 * KV_HEADS, self.head_dim).transpose(1, 2).chunk(2, dim=1)
        y = self.attend(q, k, v).transpose(1, 2).reshape(B, L, DIM)
        x = x + self.out_proj(y)
        return self.lm_head(x + self.mlp(self.norm2(x)))


def training_batches():
    """(tokens, targets) of every step: next-token prediction on random
    sequences, shared by every rank."""
    g = torch.Generator().manual_seed(1234)
    batches = []
    for _ in range(TRAIN_STEPS):
        seq = torch.randint(0, VOCAB, (BATCH, SEQ_LEN + 1), generator=g)
        batches.append((seq[:, :-1], seq[:, 1:]))
    return batches


def train(model, shard):
    """Trains with SGD on training_batches(), each tensor of length SEQ_LEN
    passed through ``shard`` first; returns the loss of every step, as the
    mean over this process's tokens."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    positions = torch.arange(SEQ_LEN).expand(BATCH, SEQ_LEN)
    losses = []
    for tokens, targets in training_batches():
        logits = model(shard(tokens), shard(positions))
        loss = F.cross_entropy(logits.flatten(0, 1), shard(targets).flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return losses


# ---- what each rank runs ---------------------------------------------------------------

def _gather_sequence(local, world_size, unshard):
    parts = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(parts, local.contiguous())
    return unshard(parts)


def _run_case(name, rank, world_size):
    from helpers.reference import poisoned_outputs

    from torch_selfattn.distributed import ring_attention, zigzag_shard, zigzag_unshard

    (query, key, value, grad_out), kwargs = case_inputs(name)
    if kwargs["is_causal"]:
        def shard(t):
            return zigzag_shard(t, rank, world_size)
        unshard = zigzag_unshard
    else:  # any split will do without a mask: plain contiguous chunks
        def shard(t):
            return t.chunk(world_size, dim=-2)[rank]

        def unshard(parts):
            return torch.cat(parts, dim=-2)
    q, k, v = (shard(t).clone().requires_grad_() for t in (query, key, value))
    with poisoned_outputs():
        out = ring_attention(q, k, v, **kwargs)
        out.backward(shard(grad_out))
    return [_gather_sequence(t, world_size, unshard) for t in (out.detach(), q.grad, k.grad, v.grad)]


def _run_ddp_training(rank, world_size):
    from torch.nn.parallel import DistributedDataParallel

    from torch_selfattn.distributed import ring_attention, zigzag_shard

    def attend(q, k, v):
        return ring_attention(q, k, v, is_causal=True, enable_gqa=True)

    torch.manual_seed(0)
    model = DistributedDataParallel(TinyLM(attend))
    local_losses = train(model, lambda t: zigzag_shard(t, rank, world_size, dim=1))
    # The loss over the whole sequence: the shards are of equal size.
    losses = torch.stack(local_losses)
    dist.all_reduce(losses)
    return {"losses": losses / world_size, "params": {n: p.detach() for n, p in model.module.named_parameters()}}


def _run_uneven_shards(rank, world_size):
    """Rank 0 holds a longer shard than the others; returns this rank's error."""
    from torch_selfattn.distributed import ring_attention

    length = 8 if rank == 0 else 6
    q = torch.randn(1, 2, length, 4)
    try:
        ring_attention(q, q, q)
    except ValueError as error:
        return str(error)
    return None


def _outcome(fn, *args):
    """("ok", result) or ("error", traceback): one failing case must not hide
    the others."""
    try:
        return ("ok", fn(*args))
    except Exception:  # noqa: BLE001 -- reported to the test process
        return ("error", traceback.format_exc())


def _rank_main(rank, world_size, init_file, result_file):
    torch.set_num_threads(1)  # the ranks share a few cores
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    results = {name: _outcome(_run_case, name, rank, world_size) for name in CASES}
    results["ddp_training"] = _outcome(_run_ddp_training, rank, world_size)
    errors = [None] * world_size
    dist.all_gather_object(errors, _run_uneven_shards(rank, world_size))
    results["uneven_shards"] = ("ok", errors)
    if rank == 0:
        torch.save(results, result_file)
    dist.destroy_process_group()
    # Leave without the interpreter's teardown: on this 2-core machine a rank
    # sometimes aborted there ("terminate called without an active
    # exception", from a native thread) after its work and results were done.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(world_size, workdir, timeout_s=240):
    """Runs every case on ``world_size`` processes; returns rank 0's
    results: {name: ("ok", result) or ("error", traceback)}."""
    init_file, result_file = os.path.join(workdir, "init"), os.path.join(workdir, "results.pt")
    context = mp.start_processes(_rank_main, args=(world_size, init_file, result_file), nprocs=world_size,
                                 join=False)
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{world_size} ranks did not finish within {timeout_s} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return torch.load(result_file)
