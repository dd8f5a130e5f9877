"""torch-selfattn's demo: train a small character-level GPT, twice.

The GPT (torch_selfattn.demo.gpt, built from MultiheadSelfAttention) learns
the King James text of Genesis and Exodus shipped with it, one
character at a time. Two copies with the same initial weights train in
lockstep on the same batches: one on torch-selfattn's kernels, one on
PyTorch's scaled_dot_product_attention. At the end the demo prints how closely
their loss curves agree and how fast each ran, samples some text, and writes
a plot of the losses and the attention map of one trained head.

    python -m torch_selfattn.demo                      # about a minute on 2 CPU cores
    python -m torch_selfattn.demo --steps 3000 --device cuda

Exit status: 0 when the loss curves agree (every step's losses within
--tolerance), 1 when they do not.
"""
import argparse
import copy
import os
import sys
import time

import torch

from torch_selfattn._cli.devices import pick_device
from torch_selfattn.demo.gpt import GPT, GPTConfig
from torch_selfattn.demo.text import TEXT_NAME, CharText
from torch_selfattn.demo.training import make_run, train_in_lockstep

# PyTorch's own function, whatever patch_sdpa has done to torch.nn.functional.
PYTORCH_SDPA = torch._C._nn.scaled_dot_product_attention
# The text the attention map is drawn for.
MAP_TEXT = "1:3 And God said, Let there be light: and there was light."
SAMPLE_PROMPT = "\n"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m torch_selfattn.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=128, help="characters per training sequence")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--embed-dim", type=int, default=128, help="model width; a multiple of --heads")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    parser.add_argument("--tolerance", type=float, default=0.01,
                        help="largest gap allowed between the two runs' losses at any step, in nats (default 0.01)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when torch-selfattn has CUDA kernels)")
    parser.add_argument("--sample-chars", type=int, default=240, help="characters to sample after training")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="CPU threads (default: PyTorch's, one per core); 1 is faster on a machine whose "
                             "cores other jobs are using")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default="torch_selfattn_demo", help="where the PNGs go (default ./torch_selfattn_demo)")
    args = parser.parse_args(argv)
    if min(args.steps, args.batch_size, args.block_size, args.layers, args.heads, args.embed_dim) < 1:
        parser.error("--steps, --batch-size, --block-size, --layers, --heads and --embed-dim must be positive")
    if args.threads < 1:
        parser.error("--threads must be positive")
    if args.sample_chars < 0:
        parser.error("--sample-chars must not be negative")
    if args.embed_dim % args.heads:
        parser.error(f"--embed-dim ({args.embed_dim}) must be a multiple of --heads ({args.heads})")
    if args.block_size < len(MAP_TEXT):
        parser.error(f"--block-size must be at least {len(MAP_TEXT)}, the length of the attention map's text")
    try:
        args.device = pick_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    return args


def require_demo_packages():
    """tqdm and matplotlib, or exit with the command that installs them."""
    try:
        import matplotlib  # noqa: F401
        from tqdm import tqdm
    except ImportError as error:
        sys.exit(f"the demo needs tqdm and matplotlib ({error}): pip install tqdm matplotlib")
    return tqdm


def agreement(runs, tolerance):
    """Prints how closely the two runs' loss curves agree; returns whether
    every step's gap is within tolerance."""
    ours, theirs = (torch.tensor(run.losses, dtype=torch.float64) for run in runs)
    gap = (ours - theirs).abs()
    worst = int(gap.argmax())
    ok = bool(gap.max() <= tolerance)
    print(f"\nagreement of the loss curves ({runs[0].label} vs {runs[1].label}, {len(gap)} steps, same batches):")
    print(f"  largest gap     {gap.max():.2e} nats at step {worst} "
          f"({ours[worst]:.5f} vs {theirs[worst]:.5f}); tolerance {tolerance:g}")
    print(f"  mean gap        {gap.mean():.2e} nats")
    print(f"  final loss      {ours[-1]:.4f} vs {theirs[-1]:.4f}")
    print(f"  verdict         {'OK' if ok else 'MISMATCH'}: the curves "
          f"{'agree' if ok else 'do NOT agree'} within {tolerance:g} nats at every step")
    return ok


def speed(runs, tokens_per_step):
    ours, theirs = (run.tokens_per_second(tokens_per_step) for run in runs)
    print(f"\nspeed (training steps after the first, forward + backward + AdamW, whole model):")
    for run in runs:
        print(f"  {run.label:15} {run.tokens_per_second(tokens_per_step):10,.0f} tokens/s")
    print(f"  ratio           {ours / theirs:.2f}x ({runs[0].label} / {runs[1].label}; > 1 means torch-selfattn "
          "is faster)")


@torch.no_grad()
def validation_loss(model, text, args, batches=8):
    generator = torch.Generator().manual_seed(args.seed + 2)
    losses = []
    for _ in range(batches):
        inputs, targets = (t.to(args.device) for t in text.batch(args.batch_size, args.block_size, generator, "val"))
        losses.append(model(inputs, targets)[1].item())
    return sum(losses) / len(losses)


def main(argv=None):
    args = parse_args(argv)
    tqdm = require_demo_packages()
    from torch_selfattn.demo.figures import plot_attention_map, plot_losses

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    device = args.device
    text = CharText.load()
    config = GPTConfig(text.vocab_size, args.block_size, args.layers, args.heads, args.embed_dim)
    torch.manual_seed(args.seed)
    ours_model = GPT(config).to(device)
    pytorch_model = copy.deepcopy(ours_model)
    for block in pytorch_model.blocks:
        block.attn.attention_fn = PYTORCH_SDPA
    params = sum(p.numel() for p in ours_model.parameters())
    threads = torch.get_num_threads()
    threads = f", {threads} thread{'' if threads == 1 else 's'}" if device.type == "cpu" else ""
    print(f"torch-selfattn demo: torch {torch.__version__}, device {device}{threads}")
    print(f"text: {TEXT_NAME}, {len(text.train) + len(text.val):,} characters, "
          f"vocabulary of {text.vocab_size}")
    print(f"model: character-level GPT, {args.layers} layers, {args.heads} heads, width {args.embed_dim}, "
          f"context {args.block_size}, {params / 1e6:.2f}M parameters")
    print(f"training: {args.steps} steps of {args.batch_size}x{args.block_size} characters, AdamW lr {args.lr:g}, "
          "float32; the same batches for both runs", flush=True)

    runs = [make_run("torch-selfattn", ours_model, args.lr), make_run("PyTorch SDPA", pytorch_model, args.lr)]
    generator = torch.Generator().manual_seed(args.seed + 1)
    tokens_per_step = args.batch_size * args.block_size
    print(f"progress: loss and tokens/s of {runs[0].label} / {runs[1].label}", flush=True)
    with tqdm(total=args.steps, desc="training", unit="step", dynamic_ncols=True) as bar:
        train_in_lockstep(runs, lambda: text.batch(args.batch_size, args.block_size, generator), args.steps,
                          tokens_per_step, device, bar)

    ok = agreement(runs, args.tolerance)
    print(f"  validation loss {validation_loss(ours_model, text, args):.4f} vs "
          f"{validation_loss(pytorch_model, text, args):.4f}")
    speed(runs, tokens_per_step)

    sample = ours_model.generate(text.encode(SAMPLE_PROMPT)[None].to(device), args.sample_chars,
                                 torch.Generator(device).manual_seed(args.seed))
    print("\nsampled from the torch-selfattn model:\n" + "\n".join("  | " + line for line in
                                                                 text.decode(sample[0, 1:]).splitlines()))

    os.makedirs(args.out_dir, exist_ok=True)
    loss_png, map_png = os.path.join(args.out_dir, "losses.png"), os.path.join(args.out_dir, "attention_map.png")
    plot_losses(runs, loss_png)
    layer, head = plot_attention_map(ours_model, text.encode(MAP_TEXT)[None].to(device), MAP_TEXT, map_png)
    print(f"\nwrote {loss_png} (both loss curves and their gap)")
    print(f"wrote {map_png} (layer {layer}, head {head}, the head with the most focused attention, on {MAP_TEXT!r})")
    print(f"\ndone in {time.perf_counter() - start:.0f} s: {'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
