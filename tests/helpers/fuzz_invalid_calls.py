"""Invalid calls, drawn by hypothesis: a valid case (fuzz_cases.py) spoiled
in one way, for every class of bad argument. Each call must raise a Python
exception whose message starts with the op's name and names the argument.

A script, so that test_fuzz_invalid.py runs it in a child process: a crash
(a signal, an abort) takes down the child only, and shows as its exit
status. It prints how many calls of each class raised.

    cd tests && python -m helpers.fuzz_invalid_calls [--device cuda]
"""
import argparse
import collections
import math
import sys

import torch
from hypothesis import given
from hypothesis import strategies as st

import torch_selfattn
from helpers.fuzz_cases import DTYPES, cases, fuzz_settings

ours = torch_selfattn.scaled_dot_product_attention
ops = torch.ops.selfattn
SDPA, FORWARD, BACKWARD = "scaled_dot_product_attention: ", "attention_forward: ", "attention_backward: "
RAISED = (RuntimeError, NotImplementedError, ValueError, IndexError, TypeError)
CI_EXAMPLES = 500

# class -> (strategy of its parameters, how to build the call). A call
# builder takes (q, k, v, mask, kwargs, params, device) and returns
# (thunk, expected message prefix, words of which one must be in the message).
SPOILERS = {}


def spoiler(name, params=st.none()):
    def register(build):
        SPOILERS[name] = (params, build)
        return build
    return register


def randn(*shape, device, dtype=torch.float32):
    return torch.randn(shape, device=device, dtype=dtype)


@spoiler("rank", st.tuples(st.sampled_from(["query", "key", "value"]), st.sampled_from([(), (3,)])))
def rank(q, k, v, mask, kwargs, params, device):
    which, shape = params
    args = {"query": q, "key": k, "value": v}
    args[which] = randn(*shape, device=device, dtype=q.dtype)
    return lambda: ours(**args, **kwargs), SDPA, [which]


@spoiler("batch_dims", st.tuples(st.integers(2, 4), st.integers(2, 4)).filter(lambda nm: nm[0] != nm[1]))
def batch_dims(q, k, v, mask, kwargs, params, device):
    n, m = params
    q2, k2, v2 = q.expand(n, *q.shape), k.expand(m, *k.shape), v.expand(m, *v.shape)
    return lambda: ours(q2, k2, v2, **kwargs), SDPA, ["query"]


@spoiler("heads_not_a_multiple", st.integers(2, 7))
def heads_not_a_multiple(q, k, v, mask, kwargs, params, device):
    kv_heads = head_count_not_dividing(q.shape[-3], start=params)
    k2 = randn(*k.shape[:-3], kv_heads, *k.shape[-2:], device=device, dtype=k.dtype)
    v2 = randn(*v.shape[:-3], kv_heads, *v.shape[-2:], device=device, dtype=v.dtype)
    return lambda: ours(q, k2, v2, **{**kwargs, "enable_gqa": True}), SDPA, ["key's head count"]


@spoiler("embedding_dim", st.integers(1, 5))
def embedding_dim(q, k, v, mask, kwargs, params, device):
    k2 = randn(*k.shape[:-1], k.shape[-1] + params, device=device, dtype=k.dtype)
    return lambda: ours(q, k2, v, **kwargs), SDPA, ["key's last dim"]


@spoiler("key_value_length", st.integers(1, 5))
def key_value_length(q, k, v, mask, kwargs, params, device):
    v2 = randn(*v.shape[:-2], v.shape[-2] + params, v.shape[-1], device=device, dtype=v.dtype)
    return lambda: ours(q, k, v2, **kwargs), SDPA, ["value's dim -2"]


@spoiler("mask_does_not_broadcast", st.tuples(st.sampled_from([-1, -2]), st.integers(2, 5)))
def mask_does_not_broadcast(q, k, v, mask, kwargs, params, device):
    dim, extra = params
    shape = [q.shape[-2], k.shape[-2]]
    shape[dim] += extra  # neither 1 nor the scores' size
    m = torch.zeros(shape, device=device)
    return lambda: ours(q, k, v, attn_mask=m, **{**kwargs, "is_causal": False}), SDPA, ["attn_mask"]


@spoiler("mask_rank", st.sampled_from([1, 7]))
def mask_rank(q, k, v, mask, kwargs, params, device):
    m = torch.zeros((1,) * (params - 1) + (k.shape[-2],), device=device)
    return lambda: ours(q, k, v, attn_mask=m, **{**kwargs, "is_causal": False}), SDPA, ["attn_mask"]


@spoiler("mask_dtype", st.sampled_from([torch.int64, torch.uint8, torch.int32, torch.float16, torch.bfloat16,
                                        torch.float64, torch.complex64]))
def mask_dtype(q, k, v, mask, kwargs, params, device):
    if params in (q.dtype, torch.float32):
        params = torch.int16
    m = torch.zeros(q.shape[-2], k.shape[-2], device=device, dtype=params)
    return lambda: ours(q, k, v, attn_mask=m, **{**kwargs, "is_causal": False}), SDPA, ["attn_mask"]


@spoiler("mask_with_is_causal", st.sampled_from([torch.bool, torch.float32]))
def mask_with_is_causal(q, k, v, mask, kwargs, params, device):
    m = torch.ones(q.shape[-2], k.shape[-2], device=device, dtype=params)
    return lambda: ours(q, k, v, attn_mask=m, **{**kwargs, "is_causal": True}), SDPA, ["attn_mask"]


def other_device(device):
    return "cpu" if device != "cpu" else "meta"


@spoiler("mixed_devices", st.sampled_from(["query", "key", "value", "attn_mask"]))
def mixed_devices(q, k, v, mask, kwargs, params, device):
    args = {"query": q, "key": k, "value": v,
            "attn_mask": torch.zeros(q.shape[-2], k.shape[-2], device=device)}
    args[params] = args[params].detach().to(other_device(device))
    return lambda: ours(**args, **{**kwargs, "is_causal": False}), SDPA, ["device"]


@spoiler("mixed_dtypes", st.tuples(st.sampled_from(["key", "value"]), st.sampled_from(list(DTYPES.values()))))
def mixed_dtypes(q, k, v, mask, kwargs, params, device):
    which, dtype = params
    if dtype == q.dtype:
        dtype = torch.float64 if q.dtype != torch.float64 else torch.float32
    args = {"query": q, "key": k, "value": v}
    args[which] = args[which].detach().to(dtype)
    return lambda: ours(**args, **kwargs), SDPA, ["same dtype"]


@spoiler("dropout_p", st.sampled_from([-1.0, -1e-9, 1.0 + 1e-9, 2.0, math.inf, -math.inf, math.nan]))
def dropout_p(q, k, v, mask, kwargs, params, device):
    return lambda: ours(q, k, v, attn_mask=mask, dropout_p=params, **kwargs), SDPA, ["dropout_p"]


@spoiler("integer", st.sampled_from([torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool]))
def integer(q, k, v, mask, kwargs, params, device):
    q2, k2, v2 = (t.detach().to(params) for t in (q, k, v))
    return lambda: ours(q2, k2, v2, **kwargs), SDPA, ["query"]


@spoiler("complex", st.sampled_from([torch.complex64, torch.complex128]))
def complex_(q, k, v, mask, kwargs, params, device):
    q2, k2, v2 = (t.detach().to(params) for t in (q, k, v))
    return lambda: ours(q2, k2, v2, **kwargs), SDPA, ["query is complex"]


@spoiler("float8", st.sampled_from([torch.float8_e4m3fn, torch.float8_e5m2]))
def float8(q, k, v, mask, kwargs, params, device):
    q2, k2, v2 = (t.detach().to(params) for t in (q, k, v))
    return lambda: ours(q2, k2, v2, **kwargs), SDPA, ["query"]


@spoiler("sparse", st.sampled_from(["query", "key", "value", "attn_mask"]))
def sparse(q, k, v, mask, kwargs, params, device):
    args = {"query": q, "key": k, "value": v,
            "attn_mask": torch.zeros(q.shape[-2], k.shape[-2], device=device)}
    args[params] = args[params].detach().to_sparse()
    return lambda: ours(**args, **{**kwargs, "is_causal": False}), SDPA, [params]


@spoiler("nested", st.sampled_from(["query, key and value", "attn_mask"]))
def nested(q, k, v, mask, kwargs, params, device):
    rows = torch.nested.nested_tensor([randn(2, 3, 4, device=device), randn(2, 5, 4, device=device)])
    if params == "attn_mask":
        m = torch.nested.nested_tensor([torch.zeros(q.shape[-2], k.shape[-2], device=device)] * 2)
        return lambda: ours(q, k, v, attn_mask=m, **{**kwargs, "is_causal": False}), SDPA, ["attn_mask"]
    return lambda: ours(rows, rows, rows), SDPA, ["query"]


def core_inputs(q, k, v):
    """query, key and value as the core ops take them: 4-D, one batch dim."""
    batch = q.shape[:-3]
    k, v = (t.detach().expand(*batch, *t.shape[-3:]) for t in (k, v))
    return [t.detach().reshape(math.prod(batch), *t.shape[-3:]) for t in (q, k, v)]


def head_count_not_dividing(q_heads, start=2):
    return next(h for h in range(start, start + q_heads + 1) if q_heads % h)


@spoiler("core_forward", st.sampled_from(["rank", "batch", "heads", "embedding_dim", "length", "mask_dim",
                                          "dtype", "dropout_p", "nested", "sparse"]))
def core_forward(q, k, v, mask, kwargs, params, device):
    q, k, v = core_inputs(q, k, v)
    (B, Hq, L, E), (_, H, S, Ev) = q.shape, v.shape
    m, p = None, 0.0
    if params == "rank":
        q = q.flatten(0, 1)
    elif params == "batch":
        k, v = randn(B + 1, H, S, E, device=device, dtype=k.dtype), randn(B + 1, H, S, Ev, device=device, dtype=v.dtype)
    elif params == "heads":
        H = head_count_not_dividing(Hq)
        k, v = randn(B, H, S, E, device=device, dtype=k.dtype), randn(B, H, S, Ev, device=device, dtype=v.dtype)
    elif params == "embedding_dim":
        k = randn(B, H, S, E + 1, device=device, dtype=k.dtype)
    elif params == "length":
        v = randn(B, H, S + 1, Ev, device=device, dtype=v.dtype)
    elif params == "mask_dim":
        m = torch.zeros(1, 1, L + 2, 1, device=device)
    elif params == "dtype":
        k = k.to(torch.float64 if k.dtype != torch.float64 else torch.float32)
    elif params == "dropout_p":
        p = 1.5
    elif params == "nested":
        q = torch.nested.nested_tensor([randn(Hq, L, E, device=device), randn(Hq, L + 1, E, device=device)])
    elif params == "sparse":
        k = k.to_sparse()
    expected = {"rank": "query", "batch": "batch size", "heads": "head count", "embedding_dim": "key's last dim",
                "length": "value's length", "mask_dim": "attn_mask", "dtype": "one dtype", "dropout_p": "dropout_p",
                "nested": "query is a nested tensor", "sparse": "key"}[params]
    return lambda: ops.attention_forward(q, k, v, m, p, False, 1.0), FORWARD, [expected]


@spoiler("core_backward", st.sampled_from(["grad_output", "output", "logsumexp", "rng_state"]))
def core_backward(q, k, v, mask, kwargs, params, device):
    q, k, v = core_inputs(q, k, v)
    out, lse, rng = ops.attention_forward(q, k, v, None, 0.5, False, 1.0)
    args = {"grad_output": torch.ones_like(out), "output": out, "logsumexp": lse, "rng_state": rng}
    B, Hq, L, Ev = out.shape
    args[params] = {"grad_output": torch.ones(B, Hq, L + 1, Ev, device=device, dtype=out.dtype),
                    "output": out.to(torch.float32 if out.dtype == torch.float64 else torch.float64),
                    "logsumexp": lse[..., None], "rng_state": rng[:1]}[params]
    return (lambda: ops.attention_backward(args["grad_output"], q, k, v, None, args["output"], args["logsumexp"],
                                           args["rng_state"], 0.5, False, 1.0, False)), BACKWARD, [params]


@st.composite
def invalid_calls(draw):
    """(class, its parameters, the valid case it spoils, whether the inputs require grad)."""
    name = draw(st.sampled_from(sorted(SPOILERS)))
    case = draw(cases().filter(lambda c: c.head_dim_present and c.L * c.S <= 4096))
    return name, draw(SPOILERS[name][0]), case, draw(st.booleans())


def check_raises(thunk, prefix, words):
    try:
        thunk()
    except RAISED as error:
        message = str(error)
        assert message.startswith(prefix), f"message does not start with {prefix!r}: {message[:300]}"
        assert any(word in message for word in words), f"message names none of {words}: {message[:300]}"
    else:
        raise AssertionError("no exception")


def run(device):
    counts = collections.Counter()

    @fuzz_settings(ci_examples=CI_EXAMPLES)
    @given(call=invalid_calls())
    def every_invalid_call_raises(call):
        name, params, case, requires_grad = call
        q, k, v, mask = case.tensors(device, requires_grad=requires_grad)
        thunk, prefix, words = SPOILERS[name][1](q, k, v, mask, case.kwargs(), params, device)
        check_raises(thunk, prefix, words)
        counts[name] += 1

    every_invalid_call_raises()
    print("raised:", " ".join(f"{name}={n}" for name, n in sorted(counts.items())))
    print(f"invalid calls: {sum(counts.values())}, classes: {len(counts)} of {len(SPOILERS)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    run(parser.parse_args().device)
    sys.exit(0)
