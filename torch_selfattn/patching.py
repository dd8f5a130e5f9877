"""Routing torch.nn.functional.scaled_dot_product_attention to torch-selfattn,
so that unmodified scripts run on our kernels."""
import contextlib

import torch
import torch.nn.functional as F

from torch_selfattn.functional import scaled_dot_product_attention

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_pytorch_sdpa = F.scaled_dot_product_attention


def _has_kernel(device_type):
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key("selfattn::attention_forward", key)


def _takes(query, key, value, attn_mask):
    """Whether our kernels can run these inputs. Anything else (another
    device, a nested or sparse tensor, an integer dtype) goes to PyTorch,
    which computes it or raises its own error."""
    tensors = [query, key, value] + ([attn_mask] if attn_mask is not None else [])
    if not all(isinstance(t, torch.Tensor) and t.layout == torch.strided and not t.is_nested for t in tensors):
        return False
    return query.dtype in _SUPPORTED_DTYPES and _has_kernel(query.device.type)


def _patched_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if _takes(query, key, value, attn_mask):
        return scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    return _pytorch_sdpa(
        query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
        enable_gqa=enable_gqa,
    )


def unpatch_sdpa():
    """Restores PyTorch's own scaled_dot_product_attention."""
    F.scaled_dot_product_attention = _pytorch_sdpa


class _Patch(contextlib.AbstractContextManager):
    def __exit__(self, *exc_info):
        unpatch_sdpa()
        return False


def patch_sdpa():
    """Routes ``torch.nn.functional.scaled_dot_product_attention`` to torch-selfattn.

    Called plainly, the patch stays until :func:`unpatch_sdpa`; used as a
    context manager (``with patch_sdpa(): ...``) it is undone on exit.
    Inputs our kernels cannot take fall back to PyTorch's function.
    """
    F.scaled_dot_product_attention = _patched_sdpa
    return _Patch()
