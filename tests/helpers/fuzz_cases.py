"""What the fuzzers draw (hypothesis strategies), shared by
test_fuzz_differential.py (valid calls against the float64 reference) and
fuzz_invalid_calls.py (calls that must raise).

Hypothesis draws the structure of a call, a Case; the tensors' values come
from a torch.Generator seeded by Case.seed. A Case prints as Python that
rebuilds it, so a failing example pastes into @example as it is.

How many examples each test runs: a fixed, derandomised set in CI
(ci_examples per test); SELFATTN_FUZZ_EXAMPLES=N runs N per test with fresh
random draws, a soak:

    SELFATTN_FUZZ_EXAMPLES=20000 python -m pytest tests/test_fuzz_differential.py tests/test_fuzz_invalid.py
"""
import dataclasses
import os
from typing import Optional

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

SOAK_EXAMPLES = int(os.environ.get("SELFATTN_FUZZ_EXAMPLES", "0"))

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Lengths around the CPU kernels' tiles (128 query rows, 512 keys) as well as small ones.
QUERY_LENGTHS = st.one_of(st.integers(0, 40), st.sampled_from([127, 128, 129, 200]))
KEY_LENGTHS = st.one_of(st.integers(0, 40), st.sampled_from([127, 511, 512, 513, 600]))
HEAD_DIMS = st.one_of(st.sampled_from([1, 2, 8, 16, 32, 64, 128]), st.integers(1, 80))
# "expanded": a size-1 base expanded over every batch and head dim (stride 0);
# "sliced": a storage offset and padded rows; "strided": every other column.
LAYOUTS = ["contiguous", "transposed", "sliced", "strided", "expanded"]
# Score elements (batch · heads · L · S) past which the batch and heads shrink.
LARGE_SCORES = 4096


def fuzz_settings(ci_examples):
    """ci_examples derandomised examples, or SELFATTN_FUZZ_EXAMPLES random ones."""
    common = dict(deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)
    if SOAK_EXAMPLES:
        return settings(max_examples=SOAK_EXAMPLES, **common)
    return settings(max_examples=ci_examples, derandomize=True, database=None, **common)


@dataclasses.dataclass(frozen=True)
class Mask:
    kind: str  # "bool", "float32" or "query_dtype"
    shape: tuple  # broadcasts to the scores (..., Hq, L, S)
    masked_rows: tuple  # rows (indices into the mask's dim -2) with every key masked
    requires_grad: bool = False


@dataclasses.dataclass(frozen=True)
class Case:
    dtype: str
    batch: tuple  # query's batch dims
    kv_batch: tuple  # key's and value's: each dim 1 (broadcast) or query's
    heads: int  # key/value heads; query has heads · groups
    groups: int
    enable_gqa: bool
    L: int
    S: int
    E: int
    Ev: int
    layouts: tuple  # of query, key, value
    mask: Optional[Mask] = None
    is_causal: bool = False
    scale: Optional[float] = None
    seed: int = 0
    head_dim_present: bool = True  # False: 2-D inputs (L, E), no batch or head dim

    @property
    def q_heads(self):
        return self.heads * self.groups

    def shapes(self):
        """The shapes of query, key and value."""
        if not self.head_dim_present:
            return (self.L, self.E), (self.S, self.E), (self.S, self.Ev)
        return ((*self.batch, self.q_heads, self.L, self.E), (*self.kv_batch, self.heads, self.S, self.E),
                (*self.kv_batch, self.heads, self.S, self.Ev))

    def score_shape(self):
        return self.shapes()[0][:-1] + (self.S,)

    def kwargs(self):
        return dict(is_causal=self.is_causal, scale=self.scale, enable_gqa=self.enable_gqa)

    def tensors(self, device="cpu", requires_grad=True):
        """query, key, value and the mask (or None), fresh from the seed."""
        g = torch.Generator().manual_seed(self.seed)
        dtype = DTYPES[self.dtype]
        q, k, v = (laid_out(shape, dtype, layout, g, device).requires_grad_(requires_grad)
                   for shape, layout in zip(self.shapes(), self.layouts))
        mask = None if self.mask is None else make_mask(self.mask, dtype, g, device)
        return q, k, v, mask


def laid_out(shape, dtype, layout, g, device):
    """A leaf of this shape, laid out as asked; the view is made on the device
    (moving a view would make it contiguous)."""
    shape = tuple(shape)

    def draw(base_shape):
        return torch.randn(base_shape, generator=g, dtype=torch.float64).to(device, dtype)

    if layout == "transposed" and len(shape) >= 3:
        t = draw((*shape[:-3], shape[-2], shape[-3], shape[-1])).transpose(-3, -2)
    elif layout == "sliced":
        t = draw((*shape[:-1], shape[-1] + 3))[..., 2 : 2 + shape[-1]]
    elif layout == "strided":
        t = draw((*shape[:-1], 2 * shape[-1]))[..., 1::2]
    elif layout == "expanded":
        t = draw((1,) * (len(shape) - 2) + shape[-2:]).expand(shape)
    else:
        t = draw(shape)
    assert t.shape == shape
    return t.detach()


def make_mask(spec, dtype, g, device):
    if spec.kind == "bool":
        mask = torch.rand(spec.shape, generator=g) > 0.3
        mask[..., list(spec.masked_rows), :] = False
    else:
        mask = torch.randn(spec.shape, generator=g, dtype=torch.float64) * 2
        mask[torch.rand(spec.shape, generator=g) < 0.1] = float("-inf")
        mask[..., list(spec.masked_rows), :] = float("-inf")
        mask = mask.to(torch.float32 if spec.kind == "float32" else dtype)
    return mask.to(device).requires_grad_(spec.requires_grad)


@st.composite
def masks(draw, score_shape):
    """A mask that broadcasts to score_shape: each dim 1 or full, leading
    dims possibly dropped, some rows fully masked."""
    kind = draw(st.sampled_from(["bool", "float32", "query_dtype"]))
    shape = tuple(d if draw(st.booleans()) else 1 for d in score_shape)
    shape = shape[draw(st.integers(0, len(shape) - 2)):]
    rows = shape[-2]
    masked_rows = tuple(sorted(draw(st.sets(st.integers(0, rows - 1), max_size=2)))) if rows > 0 else ()
    return Mask(kind, shape, masked_rows, requires_grad=kind != "bool" and draw(st.booleans()))


@st.composite
def cases(draw, max_scores=60000):
    """A valid call: every feature of PyTorch's SDPA that our function takes,
    with at most max_scores scores per head (L shrinks to fit)."""
    dtype = draw(st.sampled_from(list(DTYPES)))
    S = draw(KEY_LENGTHS)
    L = min(draw(QUERY_LENGTHS), max_scores // max(S, 1))
    small = L * S <= LARGE_SCORES
    batch = tuple(draw(st.lists(st.integers(0 if small else 1, 3 if small else 1), max_size=2 if small else 1)))
    # Key and value broadcast over query's batch dims in float32 and float64
    # only: in bfloat16 and float16 their gradients are rounded once per
    # batch before autograd sums them, which can exceed the dtype rule
    # (test_fuzz_differential.py, test_broadcast_key_value_gradients_round_once).
    broadcast_kv = dtype in ("float32", "float64")
    kv_batch = tuple(d if not broadcast_kv or draw(st.booleans()) else 1 for d in batch)
    heads = draw(st.integers(1, 3 if small else 1))
    groups = draw(st.integers(1, 3 if small else 2))
    head_dim_present = bool(batch) or heads > 1 or groups > 1 or draw(st.booleans())
    enable_gqa = groups > 1 or (head_dim_present and draw(st.booleans()))
    E, Ev = draw(HEAD_DIMS), draw(HEAD_DIMS)
    layouts = tuple(draw(st.sampled_from(LAYOUTS)) for _ in range(3))
    is_causal = draw(st.booleans())
    case = Case(dtype=dtype, batch=batch, kv_batch=kv_batch, heads=heads, groups=groups, enable_gqa=enable_gqa,
                L=L, S=S, E=E, Ev=Ev, layouts=layouts, is_causal=is_causal,
                scale=draw(st.one_of(st.none(), st.sampled_from([0.05, 0.3, 1.0, 2.5, -0.7]))),
                seed=draw(st.integers(0, 2**31 - 1)), head_dim_present=head_dim_present)
    if not is_causal and draw(st.booleans()):
        case = dataclasses.replace(case, mask=draw(masks(case.score_shape())))
    return case
