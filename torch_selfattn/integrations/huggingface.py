"""torch-selfattn as an attention implementation of Hugging Face transformers.

    import torch_selfattn.integrations.huggingface as hf_selfattn
    hf_selfattn.register()
    model = AutoModelForCausalLM.from_pretrained(..., attn_implementation="torch_selfattn")

``register()`` adds, under the name "torch_selfattn", the attention function
below to transformers' ``AttentionInterface`` and a mask function to its
``AttentionMaskInterface``. Registration is explicit, not done on import:
importing transformers takes seconds, and torch_selfattn does not pay for it
unless asked.

The mask function is transformers' own ``sdpa_mask``: a bool mask, True where
a key takes part, of shape (batch, 1, q_len, kv_len), or None where a plain
causal or full pattern lets ``is_causal`` stand in. That is exactly the mask
our kernels read, broadcast over heads without expanding it. Padding, sliding
windows and chunked attention all arrive through it.

Continuous batching (``generate_batch``, a paged KV cache): transformers
runs it only under its own implementation names ("sdpa", "paged|eager" and
flash ones). With ``attn_implementation="sdpa"`` and
:func:`torch_selfattn.patch_sdpa`, its paged attention runs on our kernels;
and an attention call that brings the paged cache (``cache=``) here is served
as transformers' SDPA path serves it: the cache hands back the keys and
values of the batch and the mask says which of them each query sees.
"""
import torch

from torch_selfattn.attention_maps import attention_weights
from torch_selfattn.functional import scaled_dot_product_attention

NAME = "torch_selfattn"


def _wants_weights(module, kwargs):
    config = getattr(module, "config", None)
    return bool(kwargs.get("output_attentions", getattr(config, "output_attentions", False)))


def attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                      position_bias=None, cache=None, **kwargs):
    """The attention of one layer, called by transformers' attention modules.

    query (batch, heads, q_len, head_dim); key and value (batch, kv_heads,
    kv_len, head_dim), kv_heads dividing heads (grouped-query attention runs
    on the kernels directly, key and value are not repeated). Returns the
    output as (batch, q_len, heads, head_dim) and the attention probabilities
    when the model is asked for them (``output_attentions=True``; computed by
    :func:`torch_selfattn.attention_weights`, before dropout), else None.
    """
    if cache is not None:
        # transformers' paged cache (continuous batching) stores the new keys and values and returns the batch's.
        key, value = cache.update(key_states=key, value_states=value, layer_idx=module.layer_idx, kwargs=kwargs)
    q_len = query.shape[2]
    # As transformers' SDPA integration: a module's causal flag holds only
    # while no mask was built (a built mask already carries the pattern) and
    # for more than one query (one query, when decoding, sees every cached key).
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = q_len > 1 and attention_mask is None and is_causal
    if position_bias is not None:
        # T5-style learned biases: transformers folds them, with the mask, into one float mask.
        from transformers.integrations.sdpa_attention import create_position_bias_mask

        attention_mask = create_position_bias_mask(position_bias, attention_mask, is_causal, query, key)
        is_causal = False
    if attention_mask is not None and attention_mask.dtype != torch.bool and attention_mask.dtype != query.dtype:
        # Our kernels take float masks in float32 or the query's dtype; a custom 4-D mask may be neither.
        attention_mask = attention_mask.to(query.dtype)

    # Gemma 2's logit soft-capping and GPT-OSS's attention sinks (s_aux) run in the kernels.
    softcap, sinks = kwargs.get("softcap"), kwargs.get("s_aux")
    output = scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, is_causal=is_causal, scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1], softcap=softcap, sinks=sinks,
    )
    weights = None
    if _wants_weights(module, kwargs):
        for name, value in (("softcap", softcap), ("s_aux", sinks)):
            if value is not None:
                raise ValueError(f"attn_implementation='{NAME}' cannot return attention weights with `{name}` "
                                 "yet; use attn_implementation='eager' for output_attentions")
        weights = attention_weights(query, key, attn_mask=attention_mask, is_causal=is_causal, scale=scaling)
    return output.transpose(1, 2).contiguous(), weights


def register(name=NAME):
    """Registers torch-selfattn with transformers under ``name`` (default
    "torch_selfattn"), so that ``attn_implementation=name`` selects it.
    Registering again is harmless. Returns the name."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        raise ImportError("torch_selfattn.integrations.huggingface needs transformers: pip install transformers "
                          "(or the extra: pip install 'torch-selfattn[hf]')") from None
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name
