"""The CUDA kernels with the options beyond PyTorch's SDPA (issue 9): sliding
windows, bottom-right alignment, ALiBi, softcap, packed variable-length
batches and KV caches. Each against a float64 reference built from PyTorch
ops (an explicit band and bias, per-sequence slices for packed batches and
caches), forward and backward, in fp16 and bf16 (tensor-core kernels) and
float32 (scalar kernels), with lengths that cross the tensor-core tiles (64
query rows and 64 keys; 32 keys at head dim 256) and empty sequences; the
reference and the dtype rule are those of the CPU tests
(tests/helpers/feature_reference.py): PyTorch's SDPA with the same band and
bias as an explicit mask (its math ops where it has no softcap). Dropout
with these options draws the very mask the CPU kernels draw for the same
rng_state, and the forward the backward's; gradcheck in float64 on the device.

Skipped, with the reason, where there is no GPU or the library was built
without its CUDA kernels (tests/helpers/cuda.py)."""
import pytest
import torch

import torch_selfattn
from helpers.cuda import DEVICE, cuda_randn, requires_cuda_kernels
from helpers.feature_reference import (check_features, each_cached_sequence, explicit_attention,
                                       pytorch_with_explicit_rules)
from helpers.packed import Packed, offsets
from helpers.reference import poisoned_outputs

pytestmark = requires_cuda_kernels
ops = torch.ops.selfattn

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
DTYPE_IDS = ["fp16", "bf16", "fp32"]


def randn(shape, dtype, g, requires_grad=True):
    return cuda_randn(shape, dtype, g, device=DEVICE, requires_grad=requires_grad)


def slopes(heads, batch=None, seed=0):
    """ALiBi slopes as models use them: 2^(−8h/H), shuffled, per batch if asked."""
    base = 2.0 ** (-8.0 * torch.arange(1, heads + 1, dtype=torch.float64) / heads)
    g = torch.Generator().manual_seed(seed)
    if batch is None:
        return base[torch.randperm(heads, generator=g)].to(DEVICE)
    return torch.stack([base[torch.randperm(heads, generator=g)] for _ in range(batch)]).to(DEVICE)


# --- the rules on the drop-in SDPA ---

# (L, S, options): windows on both sides and on one, with causal masking and
# without, top-left and bottom-right, L < S and L > S; bands narrow enough
# that whole key tiles are skipped.
RULE_CASES = {
    "window_both": (150, 200, dict(window=(20, 30))),
    "window_left_causal": (200, 200, dict(window=(40, 0), is_causal=True)),
    "window_left_only": (130, 300, dict(window=(70, -1))),
    "window_right_only": (130, 90, dict(window=(-1, 5))),
    # Rows 120 and on see no key: their band lies wholly past the keys.
    "window_past_the_keys": (300, 100, dict(window=(20, 0))),
    "bottom_right_causal_L<S": (70, 260, dict(is_causal=True, causal_alignment="bottom_right")),
    "bottom_right_causal_L>S": (200, 90, dict(is_causal=True, causal_alignment="bottom_right")),
    "bottom_right_window": (100, 333, dict(window=(50, 10), causal_alignment="bottom_right")),
    "alibi": (150, 200, dict(alibi="per_head")),
    "alibi_per_batch_causal": (129, 129, dict(alibi="per_batch", is_causal=True)),
    "softcap": (150, 200, dict(softcap=2.0)),
    "softcap_causal": (100, 65, dict(softcap=5.0, is_causal=True)),
    "everything": (160, 290, dict(window=(64, 3), causal_alignment="bottom_right", alibi="per_head", softcap=3.0,
                                  is_causal=True)),
}


def rule_options(options, B, Hq):
    options = dict(options)
    kind = options.pop("alibi", None)
    if kind is not None:
        options["alibi_slopes"] = slopes(Hq, batch=B if kind == "per_batch" else None)
    return options


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", list(RULE_CASES))
def test_score_rules(dtype, case):
    L, S, options = RULE_CASES[case]
    g = torch.Generator().manual_seed(L * S)
    B, Hq = 2, 4
    # A larger scale than 1/sqrt(E) spreads the scores, so that softcap bites.
    q, k, v = randn((B, Hq, L, 64), dtype, g), randn((B, Hq, S, 64), dtype, g), randn((B, Hq, S, 48), dtype, g)
    check_features(q, k, v, scale=0.3, **rule_options(options, B, Hq))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("E", [32, 96, 128, 256])
def test_score_rules_at_every_tile_shape(dtype, E):
    """Head dims of every tensor-core instantiation (256: 32-key tiles),
    with GQA, windows, ALiBi and softcap together."""
    g = torch.Generator().manual_seed(E)
    q, k, v = randn((1, 4, 140, E), dtype, g), randn((1, 2, 230, E), dtype, g), randn((1, 2, 230, E), dtype, g)
    check_features(q, k, v, enable_gqa=True, window=(45, 17), causal_alignment="bottom_right",
                   alibi_slopes=slopes(4), softcap=4.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_softcap_with_a_float_mask_gradient(dtype):
    """The mask is added after the softcap: its gradient is dS, while Q and K
    get dS times the softcap's derivative."""
    g = torch.Generator().manual_seed(3)
    q, k, v = randn((2, 3, 90, 64), dtype, g), randn((2, 3, 150, 64), dtype, g), randn((2, 3, 150, 40), dtype, g)
    mask = randn((1, 3, 90, 150), dtype, g)
    got = check_features(q, k, v, mask, scale=0.4, softcap=2.5, window=(30, 30), alibi_slopes=slopes(3))
    assert got[4].shape == (1, 3, 90, 150)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_rows_that_see_no_key(dtype):
    """Bottom-right causal with L > S: the first L − S rows see no key and
    give output 0, logsumexp −inf and dQ 0."""
    g = torch.Generator().manual_seed(4)
    L, S = 150, 40
    q, k, v = randn((1, 2, L, 64), dtype, g), randn((1, 2, S, 64), dtype, g), randn((1, 2, S, 64), dtype, g)
    out, dq, _, _ = check_features(q, k, v, is_causal=True, causal_alignment="bottom_right")
    assert (out[:, :, : L - S] == 0).all() and (dq[:, :, : L - S] == 0).all()
    _, logsumexp, _ = ops.attention_forward(q.detach(), k.detach(), v.detach(), None, 0.0, True, 0.125,
                                            bottom_right=True)
    assert (logsumexp[:, :, : L - S] == float("-inf")).all()
    assert logsumexp[:, :, L - S:].isfinite().all()


# --- packed variable-length batches ---

# Lengths of the sequences, queries and keys: empty ones, one row, and
# lengths on both sides of the 64-row and 64-key tiles.
VARLEN_Q = [70, 0, 1, 130, 64, 5, 65]
VARLEN_K = [90, 40, 0, 129, 64, 200, 65]

VARLEN_CASES = {
    "plain": {},
    "causal": dict(is_causal=True),
    "causal_bottom_right": dict(is_causal=True, causal_alignment="bottom_right"),
    "window": dict(window=(33, 12)),
    "alibi_per_sequence_softcap": dict(alibi="per_sequence", softcap=3.0),
    "everything": dict(is_causal=True, causal_alignment="bottom_right", window=(50, 0), alibi="per_head",
                       softcap=4.0),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", list(VARLEN_CASES))
@pytest.mark.parametrize("slack", [0, 20], ids=["tight_max", "loose_max"])
def test_varlen(dtype, case, slack):
    """slack: max_seqlen_q/k past the longest sequence, whose extra blocks
    must write nothing."""
    batch = Packed(VARLEN_Q, VARLEN_K, Hq=4, H=2, E=64, Ev=32, dtype=dtype, seed=len(case), slack=slack,
                   device=DEVICE)
    options = dict(VARLEN_CASES[case])
    kind = options.pop("alibi", None)
    if kind is not None:
        options["alibi_slopes"] = slopes(4, batch=len(VARLEN_Q) if kind == "per_sequence" else None)
    batch.check(scale=0.2, **options)


# --- KV caches ---

CACHE_USED = [0, 1, 63, 64, 65, 200, 201]  # of a cache of 201 keys: empty, one key, the tile edges, full


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("L", [1, 16])
@pytest.mark.parametrize("options", [dict(is_causal=True), dict(is_causal=False),
                                     dict(is_causal=True, window=(70, 0), alibi="per_head", softcap=5.0)],
                         ids=["causal", "full", "window_alibi_softcap"])
def test_kv_cache(dtype, L, options):
    """Gradients too: keys of the cache past what a sequence uses get 0."""
    g = torch.Generator().manual_seed(L)
    B, Hq, H = len(CACHE_USED), 4, 1
    query, key_cache, value_cache = (randn((B, Hq, L, 64), dtype, g), randn((B, H, 201, 64), dtype, g),
                                     randn((B, H, 201, 64), dtype, g))
    options = dict(options)
    if options.pop("alibi", None):
        options["alibi_slopes"] = slopes(Hq)
    used = torch.tensor(CACHE_USED, dtype=torch.int32, device=DEVICE)

    def ours(query, key_cache, value_cache, attn_mask=None, **kw):
        return torch_selfattn.kv_cache_attention(query, key_cache, value_cache, used, **kw)

    _, _, grad_key, grad_value = check_features(query, key_cache, value_cache, ours_fn=ours,
                                                pytorch_fn=each_cached_sequence(pytorch_with_explicit_rules, CACHE_USED),
                                                reference_fn=each_cached_sequence(explicit_attention, CACHE_USED),
                                                scale=0.2, **options)
    for b, n in enumerate(CACHE_USED):
        assert (grad_key[b, :, n:] == 0).all() and (grad_value[b, :, n:] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_packed_sequences_with_seqused_k(dtype):
    """cu_seqlens and seqused_k together, on the core ops: each packed
    sequence uses only the first keys of its own; the CPU kernels, on the same
    inputs, agree, and the unused keys get gradient 0."""
    g = torch.Generator().manual_seed(9)
    lengths_q, lengths_k, used = [30, 0, 70, 65], [100, 10, 70, 130], [100, 0, 33, 64]
    q = randn((1, 2, sum(lengths_q), 64), dtype, g, requires_grad=False)
    k = randn((1, 2, sum(lengths_k), 64), dtype, g, requires_grad=False)
    v = randn((1, 2, sum(lengths_k), 64), dtype, g, requires_grad=False)
    grad_out = randn((1, 2, sum(lengths_q), 64), dtype, g, requires_grad=False)
    options = dict(cu_seqlens_q=offsets(lengths_q, DEVICE), cu_seqlens_k=offsets(lengths_k, DEVICE),
                   seqused_k=torch.tensor(used, dtype=torch.int32, device=DEVICE), max_seqlen_q=max(lengths_q),
                   max_seqlen_k=max(lengths_k), bottom_right=True, window_left=40, window_right=-1)
    results = {}
    for device in (DEVICE, "cpu"):
        on = {name: t.to(device) if torch.is_tensor(t) else t for name, t in options.items()}
        args = [t.to(device) for t in (q, k, v)]
        with poisoned_outputs():
            out, lse, rng_state = ops.attention_forward(*args, None, 0.0, True, 0.2, **on)
            grads = ops.attention_backward(grad_out.to(device), *args, None, out, lse, rng_state, 0.0, True, 0.2,
                                           False, **on)
        results[device] = [out, lse, *grads[:3]]
    tolerance = 1e-2 if dtype == torch.float16 else 1e-5
    for name, a, b in zip(["output", "logsumexp", "grad_query", "grad_key", "grad_value"], results[DEVICE],
                          results["cpu"]):
        assert not a.isnan().any(), f"{name}: NaN (an element left unwritten?)"
        magnitude = max(1.0, b[b.isfinite()].abs().max().item())
        torch.testing.assert_close(a.cpu().float(), b.float(), rtol=tolerance, atol=tolerance * magnitude, msg=name)
    grad_key = results[DEVICE][3]
    starts = offsets(lengths_k, DEVICE).tolist()
    for s, n in enumerate(used):
        assert (grad_key[:, :, starts[s] + n: starts[s + 1]] == 0).all()


# --- dropout ---

def dropped_weights(device, q, k, lse, rng_state, p, **options):
    """P∘Z, the attention weights with the dropout multipliers of rng_state,
    as the backward on `device` regenerates them: with dO = I (value's last
    dim = the query rows), dV is (P∘Z)ᵀ. Hq = H. (B, H, L, S)."""
    B, H, L, _ = q.shape
    on = {name: t.to(device) if torch.is_tensor(t) else t for name, t in options.items()}
    eye = torch.eye(L, dtype=q.dtype, device=device).expand(B, H, L, L)
    value = torch.zeros(B, H, k.shape[2], L, dtype=q.dtype, device=device)
    _, _, grad_v, _ = ops.attention_backward(eye, q.to(device), k.to(device), value, None, eye, lse.to(device),
                                             rng_state.to(device), p, False, 0.1, False, **on)
    return grad_v.transpose(-1, -2).double().cpu()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("case", ["varlen", "window_bottom_right", "kv_cache", "alibi"])
def test_dropout_draws_the_cpu_mask(dtype, case):
    """For one rng_state, the CUDA forward (read back with value = I), the
    CUDA backward and the CPU backward drop the same weights: the index of
    every score in the counter space is the CPU's, sequences included."""
    g = torch.Generator().manual_seed(10)
    if case == "varlen":
        lengths_q, lengths_k = [50, 0, 70, 1, 65], [64, 20, 0, 100, 65]
        options = dict(cu_seqlens_q=offsets(lengths_q, DEVICE), cu_seqlens_k=offsets(lengths_k, DEVICE),
                       max_seqlen_q=max(lengths_q) + 3, max_seqlen_k=max(lengths_k))
        B, L, S = 1, sum(lengths_q), sum(lengths_k)
    elif case == "kv_cache":
        options = dict(seqused_k=torch.tensor([90, 0, 130], dtype=torch.int32, device=DEVICE), bottom_right=True)
        B, L, S = 3, 16, 130
    elif case == "window_bottom_right":
        options = dict(window_left=60, window_right=20, bottom_right=True)
        B, L, S = 2, 100, 150
    else:
        # ALiBi alone takes the kernels of the general rules, whose dropout
        # index is written differently from the plain kernels'.
        options = dict(alibi_slopes=slopes(3).to(torch.float32))
        B, L, S = 2, 100, 150
    q = randn((B, 3, L, 16), dtype, g, requires_grad=False)
    k = randn((B, 3, S, 16), dtype, g, requires_grad=False)
    eye = torch.eye(S, dtype=dtype, device=DEVICE).expand(B, 3, S, S)
    torch.manual_seed(12)
    with poisoned_outputs():
        forward, lse, rng_state = ops.attention_forward(q, k, eye, None, 0.4, False, 0.1, **options)
    forward = forward.double().cpu()
    backward = dropped_weights(DEVICE, q, k, lse, rng_state, 0.4, **options)
    cpu = dropped_weights("cpu", q, k, lse, rng_state, 0.4, **options)
    kept = forward != 0
    assert kept.any() and not kept.all()
    for name, weights in (("CUDA backward", backward), ("CPU backward", cpu)):
        differ = (weights != 0) != kept
        assert not differ.any(), f"{name}: {differ.sum().item()} of {kept.numel()} weights dropped differently"
    tolerance = 1e-2 if dtype != torch.float32 else 1e-5
    torch.testing.assert_close(forward, cpu, rtol=tolerance, atol=tolerance * forward.abs().max().item())


# --- gradcheck in float64 on the device ---

@pytest.mark.parametrize(
    "options",
    [
        dict(window=(2, 1), causal_alignment="bottom_right"),
        dict(is_causal=True, causal_alignment="bottom_right", alibi=True, softcap=0.8),
        dict(window=(3, -1), softcap=1.5, mask=True),
    ],
    ids=["window_bottom_right", "causal_alibi_softcap", "window_softcap_mask"],
)
def test_gradcheck_score_rules(options):
    options = dict(options)
    g = torch.Generator().manual_seed(20)
    inputs = [randn(shape, torch.float64, g) for shape in ((1, 4, 6, 5), (1, 2, 9, 5), (1, 2, 9, 3))]
    if options.pop("mask", False):
        inputs.append(randn((1, 4, 6, 9), torch.float64, g))
    if options.pop("alibi", False):
        options["alibi_slopes"] = slopes(4)

    def attention(q, k, v, mask=None):
        return torch_selfattn.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True, scale=0.9,
                                                           **options)

    assert torch.autograd.gradcheck(attention, tuple(inputs))


def test_gradcheck_varlen():
    g = torch.Generator().manual_seed(21)
    lengths_q, lengths_k = [3, 0, 5], [4, 2, 6]
    inputs = [randn(shape, torch.float64, g) for shape in ((8, 2, 4), (12, 1, 4), (12, 1, 3))]
    cu_q, cu_k = offsets(lengths_q, DEVICE), offsets(lengths_k, DEVICE)

    def attention(q, k, v):
        return torch_selfattn.varlen_attention(q, k, v, cu_q, cu_k, 5, 6, is_causal=True, window=(2, 0),
                                               causal_alignment="bottom_right", alibi_slopes=slopes(2, batch=3),
                                               softcap=1.2)

    assert torch.autograd.gradcheck(attention, tuple(inputs))


def test_gradcheck_kv_cache():
    g = torch.Generator().manual_seed(22)
    inputs = [randn(shape, torch.float64, g) for shape in ((3, 2, 2, 4), (3, 1, 7, 4), (3, 1, 7, 3))]
    used = torch.tensor([7, 2, 0], dtype=torch.int32, device=DEVICE)

    def attention(q, key_cache, value_cache):
        return torch_selfattn.kv_cache_attention(q, key_cache, value_cache, used, window=(3, 0), softcap=2.0)

    assert torch.autograd.gradcheck(attention, tuple(inputs))
