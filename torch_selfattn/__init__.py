"""torch-selfattn: fused, memory-efficient scaled dot-product attention.

Importing the package loads the C++ library, which registers these ops with
PyTorch's dispatcher:

- ``torch.ops.selfattn.scaled_dot_product_attention``: PyTorch's SDPA semantics;
- ``torch.ops.selfattn.varlen_attention`` / ``kv_cache_attention``: packed
  variable-length batches and KV-cache decoding;
- ``torch.ops.selfattn.attention_forward`` / ``attention_backward``: the core
  4-D kernels (CPU, Meta and Autograd; CUDA when built with it).

Hugging Face transformers: ``torch_selfattn.integrations.huggingface.register()``
makes ``attn_implementation="torch_selfattn"`` available.

Models saved with ``torch.export`` that call these ops need ``import
torch_selfattn`` before ``torch.export.load``, so that the ops are registered.
"""
from torch_selfattn import _build_record
from torch_selfattn._library import build_info, load_library

# Before loading: a library built against another torch fails to load, or worse.
_build_record.check_torch_version(_build_record.read())
load_library()

from torch_selfattn.attention_maps import attention_weights  # noqa: E402
from torch_selfattn.functional import kv_cache_attention, scaled_dot_product_attention, varlen_attention  # noqa: E402,E501
from torch_selfattn.multihead_self_attention import MultiheadSelfAttention  # noqa: E402
from torch_selfattn.patching import patch_sdpa, unpatch_sdpa  # noqa: E402
from torch_selfattn.plotting import plot_attention  # noqa: E402

__all__ = [
    "scaled_dot_product_attention",
    "varlen_attention",
    "kv_cache_attention",
    "MultiheadSelfAttention",
    "attention_weights",
    "plot_attention",
    "patch_sdpa",
    "unpatch_sdpa",
    "build_info",
]
__version__ = "0.1.0"
