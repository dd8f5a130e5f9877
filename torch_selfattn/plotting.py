"""Heatmaps of attention maps (matplotlib, an optional dependency:
``pip install matplotlib`` or the ``plot`` extra)."""
import torch

# Beyond this many tokens a label per row or column is unreadable; the axes
# then show positions.
MAX_LABELS = 96


def require_matplotlib(what):
    """matplotlib.figure.Figure, or an ImportError that says how to get it."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"{what} needs matplotlib: pip install matplotlib (or the extra: "
                          "pip install 'torch-selfattn[plot]')") from None
    return Figure


def plot_attention(weights, tokens=None, key_tokens=None, title=None, ax=None, path=None):
    """Draws one attention map as a heatmap: query rows down, keys across.

    Args:
        weights: a 2-D (rows, keys) tensor or array, e.g. one head of
            :func:`torch_selfattn.attention_weights` (``heads=h`` for a single
            batch element's query and key).
        tokens: labels of the query rows; for self-attention also of the keys.
        key_tokens: labels of the keys, when they differ from ``tokens``.
        title: the plot's title, e.g. "layer 3, head 1".
        ax: a matplotlib Axes to draw into; by default a new Figure is made.
        path: if given, the figure is saved there (PNG, PDF, ... by suffix).

    Returns:
        The matplotlib Figure. No pyplot state is touched, so it works with
        any backend, headless included.
    """
    weights = torch.as_tensor(weights).detach().float().cpu()
    if weights.dim() != 2:
        raise ValueError(f"plot_attention: weights must be 2-D (rows, keys), got shape {tuple(weights.shape)}; "
                         "pick one batch element and one head")
    key_tokens = tokens if key_tokens is None else key_tokens
    for name, labels, size in (("tokens", tokens, weights.shape[0]), ("key_tokens", key_tokens, weights.shape[1])):
        if labels is not None and len(labels) != size:
            raise ValueError(f"plot_attention: {name} has {len(labels)} labels for {size} positions")

    if ax is None:
        figure_class = require_matplotlib("plot_attention")
        size = min(12.0, 3.0 + 0.12 * max(weights.shape))
        fig = figure_class(figsize=(size, size * weights.shape[0] / weights.shape[1] + 0.6), layout="constrained")
        ax = fig.subplots()
    fig = ax.figure
    image = ax.imshow(weights.numpy(), cmap="viridis", vmin=0.0, interpolation="nearest", aspect="auto")
    fig.colorbar(image, ax=ax, shrink=0.8, label="attention probability")
    for labels, set_ticks, set_labels, n in ((tokens, ax.set_yticks, ax.set_yticklabels, weights.shape[0]),
                                             (key_tokens, ax.set_xticks, ax.set_xticklabels, weights.shape[1])):
        if labels is not None and n <= MAX_LABELS:
            set_ticks(range(n))
            set_labels([str(t) for t in labels], fontsize=7, fontfamily="monospace")
    ax.set_ylabel("query")
    ax.set_xlabel("key")
    if title:
        ax.set_title(title)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
