"""A small forward+backward through each CUDA kernel family, for
compute-sanitizer (benchmarks/gpu_check.sh runs it under memcheck and
racecheck). Lengths of 100 leave partial tiles at every edge:

- fp16, E=64, causal, GQA (8 query heads on 2 key/value heads): tensor cores;
- fp32 with a float mask that requires grad, E=40, Ev=24: the scalar kernels
  and the atomic mask-gradient sum over the broadcast batch dim;
- bf16 with dropout, E=128: tensor cores with the Philox stream;
- bf16, E=128, GQA, no dropout: tensor cores, or with TORCH_SELFATTN_HOPPER=1
  on an H100 the Hopper forward (as is the first case);
- fp16 E=256 causal and bf16 E=128, 300 queries on 520 keys: several key
  tiles, so the Hopper forward's rings of K and V stages wrap and both its
  loops (masked and unmasked tiles) run, with partial tiles at the edges;
- fp16 packed sequences (one empty, others across the 64-row tiles) with a
  window, ALiBi, softcap and dropout: the tensor-core kernels of the general
  rules, which index rows through cu_seqlens;
- fp16 and fp32 KV caches with an empty and a full sequence: both families
  with seqused_k.

Then --fuzz N calls drawn by the fuzzer (tests/helpers/fuzz_cases.py, the same
derandomised draws every run): every feature at once, dropout in a third of
them, forward and backward through our kernels only (no reference runs, so
that the sanitizer sees little besides our kernels).

Exits 0 when every result is finite; the sanitizer decides the rest.

    compute-sanitizer --tool memcheck python benchmarks/sanitize_case.py --fuzz 30
"""
import argparse
import os
import sys

import torch

import torch_selfattn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))


def leaf(shape, dtype, g):
    return torch.randn(shape, generator=g, device="cuda", dtype=torch.float32).to(dtype).requires_grad_()


def finite_results(name, out, leaves, g):
    grads = torch.autograd.grad(out, leaves, torch.randn(out.shape, generator=g, device="cuda").to(out.dtype))
    torch.cuda.synchronize()
    finite = all(bool(torch.isfinite(t).all()) for t in (out, *grads))
    print(f"{name}: output {tuple(out.shape)} {out.dtype}, {len(grads)} gradients, finite: {finite}", flush=True)
    return finite


def run_case(name, dtype, Hq, H, E, Ev, g, mask_shape=None, L=100, S=100, **kwargs):
    q = leaf((2, Hq, L, E), dtype, g)
    k = leaf((2, H, S, E), dtype, g)
    v = leaf((2, H, S, Ev), dtype, g)
    leaves = [q, k, v]
    if mask_shape is not None:
        kwargs["attn_mask"] = leaf(mask_shape, dtype, g)
        leaves.append(kwargs["attn_mask"])
    return finite_results(name, torch_selfattn.scaled_dot_product_attention(q, k, v, **kwargs), leaves, g)


def run_varlen_case(name, dtype, g):
    lengths = torch.tensor([37, 0, 100, 64, 65], device="cuda")
    cu = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(torch.int32)
    total = int(lengths.sum())
    leaves = [leaf((total, 4, 64), dtype, g), leaf((total, 2, 64), dtype, g), leaf((total, 2, 32), dtype, g)]
    slopes = torch.rand(5, 4, generator=g, device="cuda")
    out = torch_selfattn.varlen_attention(*leaves, cu, cu, 100, 100, dropout_p=0.1, is_causal=True, window=(40, 0),
                                          alibi_slopes=slopes, softcap=5.0)
    return finite_results(name, out, leaves, g)


def run_cache_case(name, dtype, g):
    leaves = [leaf((3, 4, 5, 64), dtype, g), leaf((3, 2, 100, 64), dtype, g), leaf((3, 2, 100, 64), dtype, g)]
    used = torch.tensor([0, 100, 37], dtype=torch.int32, device="cuda")
    out = torch_selfattn.kv_cache_attention(*leaves, used, window=(50, 0))
    return finite_results(name, out, leaves, g)


def run_drawn_cases(n):
    """n fuzzer-drawn calls, forward and backward; True when all are finite."""
    from hypothesis import given
    from hypothesis import strategies as st

    from helpers.fuzz_cases import cases, fuzz_settings

    finite = []

    @fuzz_settings(ci_examples=n)
    @given(case=cases(max_scores=16384), dropout_p=st.sampled_from([0.0, 0.0, 0.3]))
    def one(case, dropout_p):
        q, k, v, mask = case.tensors("cuda")
        leaves = [q, k, v] + ([mask] if mask is not None and mask.requires_grad else [])
        out = torch_selfattn.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                                          **case.kwargs())
        grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
        torch.cuda.synchronize()
        finite.append(all(bool(torch.isfinite(t).all()) for t in (out, *grads)))

    one()
    print(f"fuzz: {len(finite)} drawn calls, {sum(finite)} with finite results", flush=True)
    return all(finite)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fuzz", type=int, default=0, metavar="N", help="also run N fuzzer-drawn calls")
    args = parser.parse_args()
    if not torch.cuda.is_available() or "CUDA" not in torch_selfattn.build_info()["backends"]:
        sys.exit("sanitize_case: needs a CUDA device and torch_selfattn built with its CUDA kernels")
    g = torch.Generator(device="cuda").manual_seed(0)
    torch.manual_seed(0)
    results = [
        run_case("fp16 causal GQA", torch.float16, Hq=8, H=2, E=64, Ev=64, g=g, is_causal=True, enable_gqa=True),
        run_case("fp32 float mask with grad", torch.float32, Hq=3, H=3, E=40, Ev=24, g=g, mask_shape=(1, 3, 100, 100)),
        run_case("bf16 dropout", torch.bfloat16, Hq=4, H=4, E=128, Ev=128, g=g, dropout_p=0.2),
        run_case("bf16 GQA", torch.bfloat16, Hq=4, H=2, E=128, Ev=128, g=g, enable_gqa=True),
        run_case("fp16 E=256 causal, several key tiles", torch.float16, Hq=2, H=2, E=256, Ev=256, g=g, L=300, S=520,
                 is_causal=True),
        run_case("bf16 E=128, several key tiles", torch.bfloat16, Hq=2, H=1, E=128, Ev=128, g=g, L=300, S=520,
                 enable_gqa=True),
        run_varlen_case("fp16 packed sequences, window, ALiBi, softcap, dropout", torch.float16, g),
        run_cache_case("fp16 KV cache", torch.float16, g),
        run_cache_case("fp32 KV cache", torch.float32, g),
    ]
    if args.fuzz:
        results.append(run_drawn_cases(args.fuzz))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
