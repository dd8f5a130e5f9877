"""Packed batches of sequences of their own lengths (varlen_attention), and
their reference: each sequence run alone."""
import torch

import torch_selfattn
from helpers.feature_reference import check_features, explicit_attention, pytorch_with_explicit_rules


def offsets(lengths, device="cpu"):
    """cu_seqlens of sequences of these lengths: (len + 1,) int32."""
    return torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32).to(device)


class Packed:
    """A packed batch on a device: q (Tq, Hq, E), k (Tk, H, E), v (Tk, H, Ev)
    that require grad, drawn in float64 on the CPU, with their int32 offsets
    and length bounds; `slack` raises the bounds past the longest sequence
    (the kernels' extra blocks must then write nothing)."""

    def __init__(self, q_lengths, k_lengths=None, Hq=4, H=2, E=16, Ev=12, dtype=torch.float32, seed=0, slack=0,
                 device="cpu"):
        k_lengths = q_lengths if k_lengths is None else k_lengths
        g = torch.Generator().manual_seed(seed)

        def rand(*shape):
            return torch.randn(*shape, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_()

        self.q_lengths, self.k_lengths = list(q_lengths), list(k_lengths)
        self.q, self.k, self.v = rand(sum(q_lengths), Hq, E), rand(sum(k_lengths), H, E), rand(sum(k_lengths), H, Ev)
        self.cu_q, self.cu_k = offsets(q_lengths, device), offsets(k_lengths, device)
        self.max_q, self.max_k = max(q_lengths, default=0) + slack, max(k_lengths, default=0) + slack

    def sequences(self):
        return len(self.q_lengths)

    def varlen(self, q, k, v, attn_mask=None, **kwargs):
        """varlen_attention on this batch's offsets, as check_features calls it."""
        assert attn_mask is None
        return torch_selfattn.varlen_attention(q, k, v, self.cu_q, self.cu_k, self.max_q, self.max_k, **kwargs)

    def one_by_one(self, fn):
        """fn run on each sequence alone, as (1, heads, length, dim) tensors, the
        outputs packed again; ALiBi slopes of shape (sequences, Hq) go to their
        sequence, as do dropout multipliers given as one tensor per sequence.
        With return_lse=True, fn returns (out, lse) and so does this, the
        logsumexps packed as varlen_attention packs them, (Hq, total_q)."""

        def packed(q, k, v, attn_mask=None, alibi_slopes=None, dropout_multipliers=None, return_lse=False, **kwargs):
            assert attn_mask is None
            outs, lses = [], []
            cu_q, cu_k = self.cu_q.tolist(), self.cu_k.tolist()
            for s in range(self.sequences()):
                rows, keys = slice(cu_q[s], cu_q[s + 1]), slice(cu_k[s], cu_k[s + 1])
                slopes = alibi_slopes[s] if alibi_slopes is not None and alibi_slopes.dim() == 2 else alibi_slopes
                extra = {} if dropout_multipliers is None else {"dropout_multipliers": dropout_multipliers[s]}
                heads_first = [t[part].transpose(0, 1)[None] for t, part in ((q, rows), (k, keys), (v, keys))]
                if return_lse:
                    extra["return_lse"] = True
                result = fn(*heads_first, enable_gqa=True, alibi_slopes=slopes, **extra, **kwargs)
                out, lse = result if return_lse else (result, None)
                outs.append(out[0].transpose(0, 1))
                lses.append(lse)
            if return_lse:
                return torch.cat(outs), torch.cat([lse[0] for lse in lses], -1)
            return torch.cat(outs)

        return packed

    def check(self, **kwargs):
        return check_features(self.q, self.k, self.v, ours_fn=self.varlen,
                              pytorch_fn=self.one_by_one(pytorch_with_explicit_rules),
                              reference_fn=self.one_by_one(explicit_attention), **kwargs)
