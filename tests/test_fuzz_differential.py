"""Property-based differential fuzzing against PyTorch: hypothesis draws
calls over every feature at once (fuzz_cases.py: batch dims, heads, GQA
groups, L and S from 0 past the kernels' tiles, E and Ev, transposed,
sliced, strided and expanded layouts, four dtypes, bool and float masks of
every broadcast shape with fully masked rows, causal masking, scales) and
the output and every gradient must meet the dtype rule against the float64
reference (tests/helpers/reference.py). With dropout, the reference applies the
multipliers our run drew, read back from the same seed.

CI runs a fixed set (the counts in fuzz_settings below);
SELFATTN_FUZZ_EXAMPLES=N runs N fresh random examples per test (a soak).
The @example lines are cases hypothesis found failing once: they run every
time, before the drawn ones."""
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import torch_selfattn
from helpers.fuzz_cases import Case, Mask, cases, fuzz_settings
from helpers.reference import check_against_reference, check_dropout_against_reference


@pytest.mark.slow
@fuzz_settings(ci_examples=300)
@given(case=cases())
# PyTorch's default CPU path gives NaN for causal masking with a negative
# scale: its own error is taken from its math path then (reference.py).
@example(case=Case(dtype="float32", batch=(1,), kv_batch=(1,), heads=1, groups=1, enable_gqa=False, L=1, S=2, E=1,
                   Ev=1, layouts=("contiguous",) * 3, is_causal=True, scale=-0.7))
# PyTorch's math path leaves a mask out of its graph when the output is
# empty: its gradient counts as zeros (reference.run_attention).
@example(case=Case(dtype="float32", batch=(0, 0), kv_batch=(1, 1), heads=1, groups=2, enable_gqa=True, L=0, S=0, E=1,
                   Ev=1, layouts=("contiguous",) * 3, mask=Mask("float32", (1, 1, 1, 1, 1), (), requires_grad=True)))
# A mask gradient with more than one key tile: the query pass (one task)
# called MKL outside a parallel region and the key pass inside one, and their
# scores rounded differently, so dK and dV of the first tile were 8x PyTorch's
# error. Fixed: tile products run MKL on one thread (tile_gemm.cpp).
@example(case=Case(dtype="float32", batch=(), kv_batch=(), heads=1, groups=1, enable_gqa=False, L=25, S=513, E=32,
                   Ev=1, layouts=("contiguous",) * 3, mask=Mask("float32", (1, 1, 1), (), requires_grad=True),
                   scale=2.5))
def test_output_and_gradients_match_the_float64_reference(device, case):
    q, k, v, mask = case.tensors(device)
    check_against_reference(q, k, v, attn_mask=mask, **case.kwargs())


@pytest.mark.slow
@fuzz_settings(ci_examples=80)
# Fewer scores: the reference reads the multipliers back through an S×S value.
@given(case=cases(max_scores=16384), dropout_p=st.sampled_from([0.1, 0.5, 0.9]))
def test_dropout_matches_the_float64_reference_with_the_same_multipliers(device, case, dropout_p):
    q, k, v, mask = case.tensors(device)
    check_dropout_against_reference(q, k, v, mask, dropout_p=dropout_p, seed=case.seed, **case.kwargs())


@pytest.mark.xfail(strict=True, reason="known deviation: key and value broadcast over query's batch dims are expanded "
                   "before the core op, whose bfloat16 gradient of each batch is rounded before autograd sums them; "
                   "PyTorch rounds the sum once. Here the two batches' dV (-19.5, 32.5) cancel to 13.0 against 12.834.")
def test_broadcast_key_value_gradients_round_once():
    # Found by the fuzzer. The output and dQ pass; dV fails the dtype rule.
    case = Case(dtype="bfloat16", batch=(2,), kv_batch=(1,), heads=1, groups=3, enable_gqa=True, L=127, S=1, E=1,
                Ev=2, layouts=("contiguous",) * 3)
    q, k, v, mask = case.tensors()
    check_against_reference(q, k, v, attn_mask=mask, **case.kwargs())


SCALAR_BIAS = Mask("float32", (1, 1, 1), (), requires_grad=True)
TILE_GEMM = torch_selfattn.build_info()["tile_gemm"]


def bias_floor_deviation(*products):
    """Which tile products leave the case above its bound: its rounding is
    their rounding (measured with each: MKL on Zen 2, our AVX2 products, the
    portable loops)."""
    return pytest.mark.xfail(TILE_GEMM in products, strict=True, raises=AssertionError,
                             reason="known deviation: the gradient of a float32 bias broadcast over every dim is "
                             "exactly 0, a sum of dS = P ∘ (Z ∘ dP − D) over every score; D rounded to float32 "
                             "leaves up to 1.7x the rounding floor")


@pytest.mark.parametrize("case,dropout_p", [
    pytest.param(Case(dtype="float32", batch=(), kv_batch=(), heads=1, groups=2, enable_gqa=True, L=117, S=512, E=1,
                      Ev=128, layouts=("contiguous", "strided", "contiguous"), mask=SCALAR_BIAS, seed=675290), 0.0,
                 marks=bias_floor_deviation("blas", "avx2"), id="no_dropout"),
    pytest.param(Case(dtype="float32", batch=(), kv_batch=(), heads=1, groups=1, enable_gqa=False, L=27, S=511, E=32,
                      Ev=32, layouts=("contiguous",) * 3, mask=Mask("float32", (1, 1), (), requires_grad=True),
                      scale=1.0, head_dim_present=False), 0.9,
                 marks=bias_floor_deviation("blas"), id="dropout_0.9"),
])
def test_scalar_bias_gradient_rounds_within_the_floor(case, dropout_p):
    # Found by the fuzzer's soak: 4.9e-6 and 6.7e-6 against a bound of 3.9e-6.
    q, k, v, mask = case.tensors()
    if dropout_p:
        check_dropout_against_reference(q, k, v, mask, dropout_p=dropout_p, seed=case.seed, **case.kwargs())
    else:
        check_against_reference(q, k, v, attn_mask=mask, **case.kwargs())


# MKL picks its kernels by ISA: the deviation shows with its AVX-512 products
# (Sapphire Rapids); with its AVX2 products (Zen 2) and with the portable
# products the case passes.
@pytest.mark.xfail(torch_selfattn.build_info()["tile_gemm"] == "blas"
                   and torch.backends.cpu.get_cpu_capability() == "AVX512", strict=True, raises=AssertionError,
                   reason="known deviation at the rule's edge: float32 scores near 80 with dropout 0.9; P recomputed "
                   "as exp(S - lse) carries the rounding of both, and with MKL's AVX-512 products dV is 1.08x the "
                   "bound")
def test_float32_scores_near_80_with_dropout():
    # Found by the fuzzer's soak (2.59e-5 against a bound of 2.4e-5).
    case = Case(dtype="float32", batch=(), kv_batch=(), heads=1, groups=3, enable_gqa=True, L=3, S=15, E=128, Ev=1,
                layouts=("transposed", "contiguous", "contiguous"), is_causal=True, scale=2.5, seed=21336721)
    q, k, v, mask = case.tensors()
    check_dropout_against_reference(q, k, v, mask, dropout_p=0.9, seed=case.seed, **case.kwargs())
