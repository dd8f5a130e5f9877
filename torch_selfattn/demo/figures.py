"""The demo's two pictures: the loss curves of both runs and one trained
head's attention map."""
import torch

from torch_selfattn.plotting import plot_attention, require_matplotlib

# How characters without a visible glyph are labelled on the map.
VISIBLE = {" ": "·", "\n": "¶"}


def plot_losses(runs, path):
    """Loss per step of every run, and the gap between the first two."""
    figure_class = require_matplotlib("the demo's loss plot")
    fig = figure_class(figsize=(8, 5.5), layout="constrained")
    curves, gaps = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.4))
    for run, style in zip(runs, ("-", "--")):
        curves.plot(run.losses, style, linewidth=1.2, label=run.label)
    curves.set_ylabel("training loss (nats / char)")
    curves.legend()
    curves.grid(alpha=0.3)
    gap = (torch.tensor(runs[0].losses) - torch.tensor(runs[1].losses)).abs()
    gaps.semilogy(gap.clamp_min(1e-8).numpy(), linewidth=1.0, color="tab:red")
    gaps.set_ylabel(f"|{runs[0].label} − {runs[1].label}|\n(0 drawn at 1e-8)")
    gaps.set_xlabel("step")
    gaps.grid(alpha=0.3)
    fig.savefig(path, dpi=90)


def head_entropies(maps):
    """Mean entropy (nats) of every head's rows, from the 8th row on (the
    first rows have few keys to choose from); maps is (heads, rows, keys)."""
    p = maps[:, 8:].double()
    return -(p * p.clamp_min(1e-30).log()).sum(-1).mean(-1)


def plot_attention_map(model, tokens, chars, path):
    """Runs the model on tokens (1, L), takes every layer's attention maps and
    draws the most focused head's (lowest mean entropy). Returns its
    (layer, head)."""
    inputs = []
    hooks = [block.attn.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
             for block in model.blocks]
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        for hook in hooks:
            hook.remove()
    maps = [block.attn.attention_weights(x)[0].cpu() for block, x in zip(model.blocks, inputs)]
    entropies = torch.stack([head_entropies(m) for m in maps])  # (layers, heads)
    layer, head = divmod(int(entropies.argmin()), entropies.shape[1])
    labels = [VISIBLE.get(c, c) for c in chars]
    plot_attention(maps[layer][head], tokens=labels, path=path,
                   title=f"layer {layer}, head {head}: the most focused head after training")
    return layer, head
