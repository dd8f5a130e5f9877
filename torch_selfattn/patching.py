"""Routing torch.nn.functional.scaled_dot_product_attention to torch-selfattn,
so that unmodified scripts run on our kernels."""
import contextlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensor
from torch._subclasses.functional_tensor import FunctionalTensor
from torch.overrides import handle_torch_function, has_torch_function

from torch_selfattn._library import _SUPPORTED_DTYPES, _has_kernel
from torch_selfattn.functional import scaled_dot_product_attention

_pytorch_sdpa = F.scaled_dot_product_attention
# The device types with kernels, fixed when patch_sdpa() is called: asking the
# dispatcher at call time is host-side introspection that dynamo cannot trace.
_devices = frozenset()


# Plain tensors, and the types that stand for them: parameters, and the fake
# and functional tensors that export and AOT tracing run a program on. Any
# other subclass (DTensor, ...) has semantics of its own that PyTorch's
# function honours; reading its storage would not.
_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter, FakeTensor, FunctionalTensor)


def _plain(t):
    """A dense tensor of one of _PLAIN_TYPES."""
    return type(t) in _PLAIN_TYPES and t.layout == torch.strided


def _takes(query, key, value, attn_mask):
    """Whether our kernels can run these inputs (none of them nested).
    Anything else (another device, a sparse tensor, a tensor subclass, an integer dtype)
    goes to PyTorch, which computes it or raises its own error."""
    return (
        _plain(query) and _plain(key) and _plain(value) and (attn_mask is None or _plain(attn_mask))
        and query.dtype in _SUPPORTED_DTYPES and query.device.type in _devices
    )


def _patched_sdpa(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None, enable_gqa: bool = False,
) -> torch.Tensor:
    # TorchScript compiles this function when it scripts a module that calls
    # F.scaled_dot_product_attention (nn.MultiheadAttention, nn.Transformer);
    # it skips the branch below and keeps PyTorch's function.
    if not torch.jit.is_scripting():
        tensor_args = (query, key, value) if attn_mask is None else (query, key, value, attn_mask)
        # Nested tensors recognise PyTorch's own function and go there. Other
        # __torch_function__ objects (CausalBias) recognise
        # F.scaled_dot_product_attention as it is now, this function, and are
        # handed it as PyTorch's own Python functions hand themselves over.
        if not any(isinstance(t, torch.Tensor) and t.is_nested for t in tensor_args):
            if has_torch_function(tensor_args):
                return handle_torch_function(
                    _patched_sdpa, tensor_args, query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                    is_causal=is_causal, scale=scale, enable_gqa=enable_gqa,
                )
            if _takes(query, key, value, attn_mask):
                return scaled_dot_product_attention(
                    query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    return _pytorch_sdpa(
        query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
        enable_gqa=enable_gqa,
    )


def unpatch_sdpa():
    """Restores PyTorch's own scaled_dot_product_attention."""
    F.scaled_dot_product_attention = _pytorch_sdpa


class _Patch(contextlib.AbstractContextManager):
    """Undoes one patch_sdpa(): restores the function that was there before
    it, so nested blocks unwind one level at a time."""

    def __init__(self, previous):
        self._previous = previous

    def __exit__(self, *exc_info):
        F.scaled_dot_product_attention = self._previous
        return False


def patch_sdpa():
    """Routes ``torch.nn.functional.scaled_dot_product_attention`` to torch-selfattn.

    Called plainly, the patch stays until :func:`unpatch_sdpa`; used as a
    context manager (``with patch_sdpa(): ...``) it is undone on exit, which
    restores whatever was there before the block (an outer patch, say).
    Inputs our kernels cannot take fall back to PyTorch's function.
    """
    global _devices
    _devices = frozenset(device for device in ("cpu", "cuda") if _has_kernel(device))
    previous = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _patched_sdpa
    return _Patch(previous)
