"""The yardstick every numerical test uses.

The reference is PyTorch's math SDPA on float64 copies of the very inputs the
kernels see (already rounded to their dtype). A result passes when its error
against that reference is at most twice the error of PyTorch's own SDPA run
in the same dtype on the same inputs, plus a floor at the reference's magnitude (at least 1): one unit of
rounding of the result's dtype and 32 of the float32 accumulator. The
floor keeps cases where the exact answer is 0, or where PyTorch happens to be
exact, from demanding more than rounding noise. Float64 results are compared
with a reference that is itself float64, so their differences are two
roundings against each other; their floor is FLOAT64_FLOOR, relative.

Outputs are poisoned: the tests run with PyTorch's deterministic mode, whose
``fill_uninitialized_memory`` fills every ``empty`` tensor (ours included)
with NaN, so an element a kernel forgets to write fails the comparison.
"""
import contextlib
import os

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import torch_selfattn

FLOAT64_FLOOR = 1e-12
RESULT_NAMES = ["output", "grad_query", "grad_key", "grad_value", "grad_attn_mask"]
# The backends PyTorch may pick for the yardstick. cuDNN is left out: it has
# read a float32 mask given with fp16/bf16 inputs as if it were in their
# dtype, silently (pytorch/pytorch#191612), and a yardstick must not be wrong.
YARDSTICK_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

ours = torch_selfattn.scaled_dot_product_attention
# PyTorch's own function, whatever patch_sdpa has done to torch.nn.functional.
pytorch_sdpa = torch._C._nn.scaled_dot_product_attention

# poisoned_outputs turns on deterministic mode, in which any cuBLAS call
# raises unless cuBLAS is given a fixed workspace. The kernels call no cuBLAS
# today; this keeps a future at::matmul in them from failing for that alone.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@contextlib.contextmanager
def poisoned_outputs():
    """Every uninitialised tensor allocated inside is filled with NaN."""
    was_on = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    was_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_on, warn_only=was_warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = was_fill


def leaves_of(q, k, v, attn_mask):
    """The inputs that take part in the backward: q, k, v and a float mask
    that requires grad."""
    leaves = [q, k, v]
    if attn_mask is not None and attn_mask.requires_grad:
        leaves.append(attn_mask)
    return leaves


def run_attention(fn, q, k, v, attn_mask, grad_out, **kwargs):
    """Output and gradients of fn (an SDPA with PyTorch's signature) at the
    given leaves, for the given output gradient. A leaf that fn left out of
    its graph gets zeros (PyTorch's math path does that to a mask when the
    output is empty)."""
    out = fn(q, k, v, attn_mask=attn_mask, **kwargs)
    return [out, *torch.autograd.grad(out, leaves_of(q, k, v, attn_mask), grad_out, allow_unused=True,
                                      materialize_grads=True)]


def as_float64(t):
    if t is None:
        return None
    copy = t.detach().double() if t.is_floating_point() else t.detach().clone()
    return copy.requires_grad_(t.requires_grad)


def reference(q, k, v, attn_mask, grad_out, fn=pytorch_sdpa, **kwargs):
    """PyTorch's math SDPA (or fn, on PyTorch's math path) in float64 on
    copies of the inputs."""
    with sdpa_kernel([SDPBackend.MATH]):
        return run_attention(fn, *map(as_float64, (q, k, v, attn_mask, grad_out)), **kwargs)


def pytorch_results(q, k, v, attn_mask, grad_out, fn=pytorch_sdpa, **kwargs):
    """PyTorch's own SDPA (or fn, built on it) in the inputs' dtype, the
    backend picked by its dispatcher among YARDSTICK_BACKENDS. PyTorch's math
    backend, in the same dtype, stands in where the picked kernel raises (the
    CUDA efficient kernel refuses a float32 mask with fp16/bf16 inputs) or
    gives NaN (the CPU flash kernel for causal masking with a negative scale;
    the CUDA kernels on fully masked rows, which the math backend defines as
    0): PyTorch's error is then that of its math path."""
    try:
        with sdpa_kernel(YARDSTICK_BACKENDS):
            results = run_attention(fn, q, k, v, attn_mask, grad_out, **kwargs)
        if not any(t.isnan().any() for t in results):
            return results
    except RuntimeError:
        pass
    with sdpa_kernel([SDPBackend.MATH]):
        return run_attention(fn, q, k, v, attn_mask, grad_out, **kwargs)


def max_error(result, expected):
    if result.numel() == 0:
        return 0.0
    return (result.double() - expected).abs().max().item()


def assert_within_dtype_rule(name, got, pytorch, expected):
    """|got - expected| <= 2 |pytorch - expected| + floor·max(|expected|, 1)."""
    assert got.shape == expected.shape, f"{name}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    assert got.device == expected.device, f"{name} is on {got.device}, the inputs on {expected.device}"
    assert got.dtype == pytorch.dtype, f"{name}: dtype {got.dtype}, expected {pytorch.dtype}"
    assert not got.isnan().any(), f"{name}: NaN in the result (an element left unwritten?)"
    magnitude = expected.abs().max().item() if expected.numel() else 0.0
    if got.dtype == torch.float64:
        floor = FLOAT64_FLOOR * max(magnitude, 1.0)
    else:
        floor = (torch.finfo(got.dtype).eps + 32 * torch.finfo(torch.float32).eps) * max(magnitude, 1.0)
    bound = 2 * max_error(pytorch, expected) + floor
    error = max_error(got, expected)
    assert error <= bound, f"{name}: error {error:.3g} against float64, bound {bound:.3g} (2x PyTorch's + rounding floor)"


def assert_results_within_dtype_rule(got, pytorch, expected):
    """The dtype rule for each of [output, grad_query, grad_key, grad_value,
    grad_attn_mask] that run_attention returned."""
    for name, a, b, c in zip(RESULT_NAMES, got, pytorch, expected):
        assert_within_dtype_rule(name, a, b, c)


def check_against_reference(q, k, v, attn_mask=None, ours_fn=ours, pytorch_fn=pytorch_sdpa, **kwargs):
    """Runs torch_selfattn (ours_fn), PyTorch in the inputs' dtype
    (pytorch_fn, through pytorch_results) and the float64 reference
    (pytorch_fn on float64 copies) on the same inputs, on their device, and
    the same random output gradient; asserts the dtype rule for the output
    and every gradient. Returns ours."""
    with sdpa_kernel([SDPBackend.MATH]):
        shape = pytorch_fn(q.detach(), k.detach(), v.detach(),
                           attn_mask=None if attn_mask is None else attn_mask.detach(), **kwargs).shape
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grad_out = grad_out.to(q.device, q.dtype)
    with poisoned_outputs():
        got = run_attention(ours_fn, q, k, v, attn_mask, grad_out, **kwargs)
    pytorch = pytorch_results(q, k, v, attn_mask, grad_out, fn=pytorch_fn, **kwargs)
    expected = reference(q, k, v, attn_mask, grad_out, fn=pytorch_fn, **kwargs)
    assert_results_within_dtype_rule(got, pytorch, expected)
    return got


def dropout_multipliers(query, key, p, seed, **kwargs):
    """The dropout multipliers Z (0 where dropped, 1/(1-p) where kept) that a
    call with inputs of these shapes and keyword arguments (enable_gqa, a
    window, ...) draws after torch.manual_seed(seed), shaped like the scores
    (..., Hq, L, S), in float64. The keep decision is a function of the seed
    and the score's index only, so Z is read back through the op itself:
    with zero queries and value = identity the output is the probabilities
    (1/S each without score rules), and the dropped run's output divided by
    them is Z wherever a key is visible; hidden keys get 0."""
    S = key.shape[-2]
    q = torch.zeros(query.shape, dtype=torch.float64, device=query.device)
    k = torch.zeros(key.shape, dtype=torch.float64, device=key.device)
    eye = torch.eye(S, dtype=torch.float64, device=key.device).expand(*key.shape[:-2], S, S)
    with torch.no_grad():
        probs = ours(q, k, eye, **kwargs)
        torch.manual_seed(seed)
        dropped = ours(q, k, eye, dropout_p=p, **kwargs)
    return torch.where(probs > 0, dropped / probs, torch.zeros_like(probs))


def dropped_attention(z, q, k, v, attn_mask=None, **kwargs):
    """(softmax(QKᵀ·scale + mask) ∘ Z)·V through PyTorch's own ops, in the
    inputs' dtype: the reference formula for a run with dropout."""
    eye = torch.eye(k.shape[-2], dtype=q.dtype, device=q.device).expand(*k.shape[:-2], -1, -1)
    weights = pytorch_sdpa(q, k, eye, attn_mask=attn_mask, **kwargs)
    if kwargs.get("enable_gqa"):
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
    return (weights * z.to(q.dtype)) @ v


def check_dropout_against_reference(q, k, v, attn_mask=None, *, dropout_p, seed, **kwargs):
    """check_against_reference for a run with dropout after
    torch.manual_seed(seed): PyTorch's run and the float64 reference apply
    the same multipliers, read back with dropout_multipliers."""
    z = dropout_multipliers(q, k, dropout_p, seed, enable_gqa=kwargs.get("enable_gqa", False))

    def dropped_ours(*args, **kw):
        torch.manual_seed(seed)
        return ours(*args, dropout_p=dropout_p, **kw)

    def dropped_pytorch(*args, **kw):
        return dropped_attention(z, *args, **kw)

    return check_against_reference(q, k, v, attn_mask, ours_fn=dropped_ours, pytorch_fn=dropped_pytorch, **kwargs)
