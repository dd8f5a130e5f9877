"""The Hopper forward (csrc/cuda/hopper/: built on CuTe; TMA, wgmma, a
producer and two ping-ponging consumer warpgroups) against the float64 reference (tests/helpers/reference.py's rule), on a compute
capability 9.0 device. The path is opt-in until it has been verified on an
H100: each test here switches it on with TORCH_SELFATTN_HOPPER=1, which the
library reads at every call.

Every check also asserts which forward kernel ran, read from the profiler's
kernel names, so that a silent fallback to the sm_80 kernels cannot pass for
the new path, and the cases the path declines are checked to fall back.
benchmarks/gpu_check.sh (STEPS=hopper) also runs tests/test_cuda.py and
tests/test_cuda_runtime.py with the switch on, so every case there that the
path takes runs on it too.

Skipped, with the reason, without a CUDA build and device, on another
compute capability, or with a build that lacks sm_90a code."""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from torch.nn.attention import SDPBackend, sdpa_kernel

import torch_selfattn

from helpers.cuda import DEVICE, HALF_DTYPES, HALF_IDS, capture, cuda_kernels_missing, cuda_qkv, make_mask
from helpers.reference import (YARDSTICK_BACKENDS, assert_within_dtype_rule, check_against_reference, ours,
                               poisoned_outputs, pytorch_sdpa)

SWITCH = "TORCH_SELFATTN_HOPPER"


def hopper_missing():
    """Why the Hopper kernels cannot run here, or None when they can."""
    missing = cuda_kernels_missing()
    if missing is not None:
        return missing
    capability = torch.cuda.get_device_capability()
    if capability != (9, 0):
        return f"the Hopper kernels need compute capability 9.0; this device has {capability[0]}.{capability[1]}"
    archs = torch_selfattn.build_info()["cuda_archs"]
    if "sm_90a" not in archs:
        return f"torch_selfattn was built without sm_90a code (compiled for {archs})"
    return None


pytestmark = pytest.mark.skipif(hopper_missing() is not None, reason=str(hopper_missing()))


@pytest.fixture(autouse=True)
def hopper_switched_on(monkeypatch):
    monkeypatch.setenv(SWITCH, "1")


def forward_path(fn):
    """Runs fn under the profiler; returns its result and which forward
    kernel family ran: "hopper", "tensor_core" (sm_80) or "scalar". Fails when
    the profiler saw no forward kernel at all, so that a profiler that records
    nothing cannot make a fallback check pass."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        result = fn()
        torch.cuda.synchronize()
    # Ours only: PyTorch's kernels, which the checks also run, do not count.
    # Names are demangled ("selfattn::cuda::tc::forward_kernel<...>"); the
    # mangled forms ("8selfattn4cuda2tc14forward_kernel") are matched too.
    names = {event.name for event in prof.events() if "selfattn" in event.name}
    if any("hopper_forward_kernel" in name for name in names):
        return result, "hopper"
    if any("tc::forward_kernel" in name or "2tc14forward_kernel" in name for name in names):
        return result, "tensor_core"
    if any("forward_kernel" in name for name in names):
        return result, "scalar"
    raise AssertionError(f"the profiler saw no forward kernel of ours; it saw {sorted(names)[:30]}")


def check_path_and_accuracy(expected_path, q, k, v, attn_mask=None, **kwargs):
    """check_against_reference (output and every gradient by the dtype rule; outputs
    poisoned), asserting that the forward ran on expected_path."""
    got, path = forward_path(lambda: check_against_reference(q, k, v, attn_mask=attn_mask, **kwargs))
    assert path == expected_path, f"the forward ran on the {path} kernels, expected {expected_path}"
    return got


def check_forward_only(q, k, v, **kwargs):
    """The output alone by the dtype rule, for sizes whose float64 backward
    would be slow; asserts the Hopper kernel ran."""
    q, k, v = (t.detach() for t in (q, k, v))
    with poisoned_outputs():
        got, path = forward_path(lambda: ours(q, k, v, **kwargs))
    assert path == "hopper", f"the forward ran on the {path} kernels"
    with sdpa_kernel(YARDSTICK_BACKENDS):
        pytorch = pytorch_sdpa(q, k, v, **kwargs)
    with sdpa_kernel([SDPBackend.MATH]):
        expected = pytorch_sdpa(q.double(), k.double(), v.double(), **kwargs)
    assert_within_dtype_rule("output", got, pytorch, expected)


# --- the cases the path takes ---

LENGTHS = [(128, 128), (256, 640), (113, 203), (1, 77), (300, 70), (1000, 1000), (257, 129), (65, 1100)]


def path_cases():
    """Every dtype, head dim and causal setting; the (L, S) pairs rotate over
    them: whole tiles, several tiles (the ring wraps), partial tiles at both
    edges (odd lengths), one query row, L > S and L < S (causal top-left
    either way)."""
    cases = []
    for d, dtype in enumerate(HALF_DTYPES):
        for E in (64, 128, 256):
            for causal in (False, True):
                for i in range(2):
                    L, S = LENGTHS[(2 * d + E // 64 + 3 * causal + 3 * i) % len(LENGTHS)]
                    name = f"{HALF_IDS[d]}-E{E}-L{L}-S{S}-{'causal' if causal else 'full'}"
                    cases.append(pytest.param(dtype, E, L, S, causal, id=name))
    return cases


@pytest.mark.parametrize("dtype,E,L,S,causal", path_cases())
def test_forward_on_the_hopper_path(dtype, E, L, S, causal):
    q, k, v = cuda_qkv(dtype, B=2, Hq=3, L=L, S=S, E=E, seed=E + L + S + causal)
    check_path_and_accuracy("hopper", q, k, v, is_causal=causal)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=HALF_IDS)
@pytest.mark.parametrize("H", [2, 1], ids=["gqa", "mqa"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_grouped_and_multi_query(dtype, H, causal):
    q, k, v = cuda_qkv(dtype, Hq=8, H=H, L=190, S=260, E=128 if causal else 64, seed=H + 10 * causal)
    check_path_and_accuracy("hopper", q, k, v, is_causal=causal, enable_gqa=True)


@pytest.mark.parametrize("E", [64, 256])
@pytest.mark.parametrize("L,S", [(190, 70), (70, 390)], ids=["L>S", "L<S"])
def test_causal_with_unequal_lengths(E, L, S):
    """Top-left causal masking (PyTorch's) when the lengths differ: rows past
    S see every key, and with L < S the keys past L are hidden from all."""
    q, k, v = cuda_qkv(torch.float16, Hq=2, L=L, S=S, E=E, seed=L + E)
    check_path_and_accuracy("hopper", q, k, v, is_causal=True)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=HALF_IDS)
@pytest.mark.parametrize("scale,path", [(0.05, "hopper"), (1.0, "hopper"), (-0.7, "tensor_core")])
def test_scale(dtype, scale, path):
    """A negative scale reverses the order of the scores, which the
    exponent's FFMA with the row maximum assumes kept: it falls back."""
    q, k, v = cuda_qkv(dtype, L=150, S=170, E=64, seed=3)
    check_path_and_accuracy(path, q, k, v, scale=scale)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=HALF_IDS)
@pytest.mark.parametrize("layout", ["transposed", "sliced_aligned", "sliced_unaligned"])
def test_strided_layouts(dtype, layout):
    """(B, L, H, E) storage viewed as (B, H, L, E), and slices with padded
    rows, are read in place through the tensor maps' strides (an unaligned
    slice is first copied by cuda_ops.cpp, as for the sm_80 kernels)."""
    q, k, v = cuda_qkv(dtype, Hq=4, L=130, S=200, E=64, seed=5, layout=layout)
    check_path_and_accuracy("hopper", q, k, v, is_causal=True)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=HALF_IDS)
@pytest.mark.parametrize("E", [64, 128, 256])
def test_long_sequences(dtype, E):
    """Many tiles per block, so every stage of the ring is refilled many
    times, and a grid of many blocks; forward only."""
    q, k, v = cuda_qkv(dtype, B=1, Hq=4, L=3000, S=3000, E=E, seed=E)
    check_forward_only(q, k, v, is_causal=E == 128)


def test_logsumexp_matches_the_float64_reference():
    """The logsumexp the op returns ((B, Hq, L) float32, which the backward
    reads) against the float64 one, by the dtype rule with the sm_80
    kernels' logsumexp as the yardstick."""
    q, k, v = (t.detach() for t in cuda_qkv(torch.bfloat16, Hq=4, H=2, L=333, S=517, E=128, seed=41))
    scale = 0.125

    def forward():
        return torch.ops.selfattn.attention_forward(q, k, v, None, 0.0, True, scale)

    (_, lse, _), path = forward_path(forward)
    assert path == "hopper"
    with pytest.MonkeyPatch.context() as m:
        m.delenv(SWITCH)
        (_, sm80_lse, _), sm80_path = forward_path(forward)
    assert sm80_path == "tensor_core"
    scores = q.double() @ k.double().repeat_interleave(2, dim=1).transpose(-2, -1) * scale
    hidden = torch.ones(333, 517, dtype=torch.bool, device=DEVICE).triu(1)
    expected = scores.masked_fill(hidden, float("-inf")).logsumexp(dim=-1)
    assert lse.shape == (2, 4, 333) and lse.dtype == torch.float32
    assert_within_dtype_rule("logsumexp", lse, sm80_lse, expected)


def test_same_bits_every_run():
    """A race (a missing barrier, a stage refilled too early) shows as
    results that change between runs on the same inputs."""
    q, k, v = (t.detach() for t in cuda_qkv(torch.bfloat16, B=2, Hq=8, L=1500, S=1500, E=128, seed=7))
    first, path = forward_path(lambda: ours(q, k, v, is_causal=True))
    assert path == "hopper"
    for _ in range(5):
        assert torch.equal(ours(q, k, v, is_causal=True), first)


def test_graph_replay_equals_eager():
    """Tensor maps are built at capture and name the static inputs; a replay
    on new values copied into them gives what eager gives."""
    q, k, v = (t.detach() for t in cuda_qkv(torch.float16, Hq=4, H=2, L=300, S=400, E=128, seed=20))
    graph, static = capture(lambda: ours(q, k, v, is_causal=True, enable_gqa=True))
    fresh = [t.detach() for t in cuda_qkv(torch.float16, Hq=4, H=2, L=300, S=400, E=128, seed=22)]
    for t, new in zip((q, k, v), fresh):
        t.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    eager, path = forward_path(lambda: ours(*fresh, is_causal=True, enable_gqa=True))
    assert path == "hopper"
    torch.testing.assert_close(static, eager, rtol=0, atol=0)


# --- the cases it declines, which fall back ---

@pytest.mark.parametrize(
    "case,path",
    [
        (dict(E=96), "tensor_core"),
        (dict(E=32), "tensor_core"),
        (dict(E=192), "tensor_core"),
        (dict(E=64, Ev=128), "tensor_core"),
        (dict(E=128, mask="bool"), "tensor_core"),
        (dict(E=64, mask="float32"), "tensor_core"),
        (dict(E=64, dtype=torch.float32), "scalar"),
        (dict(E=64, expanded=True), "tensor_core"),
    ],
    ids=["E96", "E32", "E192", "Ev_differs", "bool_mask", "float_mask", "fp32", "expanded_kv"],
)
def test_what_the_path_declines_falls_back(case, path):
    case = dict(case)
    dtype = case.pop("dtype", torch.bfloat16)
    mask_kind = case.pop("mask", None)
    expanded = case.pop("expanded", False)
    q, k, v = cuda_qkv(dtype, L=90, S=140, seed=case["E"], **case)
    if expanded:
        # Stride-0 batch dims, as from expand(): the tensor maps decline them.
        k, v = (t.detach()[:1].expand_as(t).requires_grad_() for t in (k, v))
    mask = None if mask_kind is None else make_mask(mask_kind, (90, 140), dtype, torch.Generator().manual_seed(1))
    check_path_and_accuracy(path, q, k, v, attn_mask=mask)


@pytest.mark.parametrize(
    "options",
    [dict(window_left=32), dict(window_right=0), dict(bottom_right=True), dict(softcap=30.0)],
    ids=["window_left", "window_right", "bottom_right", "softcap"],
)
def test_options_beyond_sdpa_never_take_the_path(options):
    """The core ops' options beyond SDPA's are not in the Hopper kernel: the
    forward either refuses them on CUDA (as it does until the sm_80 kernels
    take them) or runs them elsewhere, never on the Hopper path."""
    q, k, v = (t.detach() for t in cuda_qkv(torch.bfloat16, L=128, S=128, E=64, seed=8))

    def forward():
        try:
            return torch.ops.selfattn.attention_forward(q, k, v, None, 0.0, True, 0.125, **options)
        except NotImplementedError:
            return None

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        forward()
        torch.cuda.synchronize()
    assert not any("hopper_forward_kernel" in event.name for event in prof.events())


def test_dropout_falls_back():
    q, k, v = (t.detach() for t in cuda_qkv(torch.float16, L=64, S=64, E=64, seed=2))
    out, path = forward_path(lambda: ours(q, k, v, dropout_p=0.3))
    assert path == "tensor_core"
    assert torch.isfinite(out).all()


def test_off_without_the_switch(monkeypatch):
    monkeypatch.delenv(SWITCH)
    q, k, v = cuda_qkv(torch.bfloat16, L=128, S=128, E=128, seed=4)
    check_path_and_accuracy("tensor_core", q, k, v)


def test_switch_takes_only_1(monkeypatch):
    monkeypatch.setenv(SWITCH, "yes")
    q, k, v = (t.detach() for t in cuda_qkv(torch.bfloat16, L=128, S=128, E=64, seed=6))
    _, path = forward_path(lambda: ours(q, k, v))
    assert path == "tensor_core"

