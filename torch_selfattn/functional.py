"""The drop-in function: torch.nn.functional.scaled_dot_product_attention's
signature, running on the torch-selfattn kernels."""
import torch


def scaled_dot_product_attention(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):
    r"""softmax(query @ key.transpose(-2, -1) * scale + attn_mask) @ value, like
    :func:`torch.nn.functional.scaled_dot_product_attention`.

    Shapes: query (N, ..., Hq, L, E), key (N, ..., H, S, E), value (N, ..., H, S, Ev);
    the result is (N, ..., Hq, L, Ev). The batch dims broadcast as in PyTorch.

    Args:
        attn_mask: bool (True = takes part) or float (added to the scores),
            broadcastable to (N, ..., Hq, L, S). A float mask that requires
            grad gets its gradient.
        dropout_p: probability of dropping an attention weight; drawn from
            PyTorch's default generator, so ``torch.manual_seed`` fixes it.
        is_causal: top-left aligned causal mask; not together with attn_mask.
        scale: defaults to 1 / sqrt(E).
        enable_gqa: let Hq be a multiple of H (grouped-query attention),
            without expanding key and value.
    """
    return torch.ops.selfattn.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attn_mask,
        dropout_p=dropout_p,
        is_causal=is_causal,
        scale=scale,
        enable_gqa=enable_gqa,
    )
