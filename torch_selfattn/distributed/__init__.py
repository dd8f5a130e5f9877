"""Context parallelism: attention over a sequence sharded across the ranks of
a torch.distributed process group (ring attention), and the zig-zag layout
that balances causal attention across the ranks.

    from torch_selfattn.distributed import ring_attention, zigzag_shard
"""
from torch_selfattn.distributed.attention import ring_attention
from torch_selfattn.distributed.zigzag import zigzag_shard, zigzag_unshard

__all__ = ["ring_attention", "zigzag_shard", "zigzag_unshard"]
