"""Memory: forward and backward, and the double backward of a gradient
penalty, must not hold anything of size L×S. At
L = S = 8192 one such float32 matrix per head is 256 MiB, at 32768 it is
4 GiB; the peak resident set of a fresh child process may grow by far less:
by the results themselves and a bounded scratch per thread."""
import json
import subprocess
import sys
import textwrap

import pytest

MiB = 1024 * 1024


def results_bytes(L, H, E):
    """What the results themselves take: output, dq, dk, dv (float32) and logsumexp."""
    return (4 * H * L * E + H * L) * 4


def scores_bytes(L):
    """One float32 L×L matrix."""
    return L * L * 4


# What every child runs first.
CHILD_PRELUDE = textwrap.dedent(
    """
    import json, sys
    import torch, torch_selfattn

    def peak_mib():
        # VmHWM, the peak of this process's own memory map. Not ru_maxrss:
        # a child's ru_maxrss starts at its parent's resident set (Linux folds
        # the pre-exec memory map into it), so a large pytest process hides
        # the child's own peak.
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024

    mode, L, H, E, control = sys.argv[1], *map(int, sys.argv[2:])

    def control_mib():
        # The measurement itself must see an L×S matrix when there is one.
        before = peak_mib()
        scores_matrix = torch.ones(L, L)
        return peak_mib() - before
    """
)

CHILD = CHILD_PRELUDE + textwrap.dedent(
    """

    def make(L, S, mask_grad):
        g = torch.Generator().manual_seed(0)
        q = torch.randn(1, H, L, E, generator=g, requires_grad=True)
        k = torch.randn(1, H, S, E, generator=g, requires_grad=True)
        v = torch.randn(1, H, S, E, generator=g, requires_grad=True)
        # A key-padding style additive mask, broadcast over heads and rows.
        mask = torch.randn(1, 1, 1, S, generator=g).requires_grad_(mask_grad) if mask_grad is not None else None
        grad_out = torch.randn(1, H, L, E, generator=g)
        return q, k, v, mask, grad_out

    def step(q, k, v, mask, grad_out):
        out = torch_selfattn.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out.backward(grad_out)
        return out

    mask_grad = {"plain": None, "mask": True}[mode]
    # Warm up at a small size on the same path: thread pools, lazily built
    # state and per-thread scratch of fixed size are not what is measured.
    step(*make(256, 256, mask_grad))

    q, k, v, mask, grad_out = make(L, L, mask_grad)
    before = peak_mib()
    out = step(q, k, v, mask, grad_out)
    after = peak_mib()

    report = {"before": before, "after": after, "threads": torch.get_num_threads()}
    grads = [q.grad, k.grad, v.grad] + ([mask.grad] if mask is not None else [])
    report["finite"] = bool(torch.isfinite(out).all()) and all(bool(torch.isfinite(t).all()) for t in grads)
    report["shapes"] = [list(t.shape) for t in [out] + grads]

    # Cheap checks of the values, in float64.
    qd, kd, vd, go = (t.detach().double() for t in (q, k, v, grad_out))
    bias = mask.detach().double() if mask is not None else 0.0
    rows = torch.tensor([0, 1, 4095, L - 1])
    scores = qd[:, :, rows] @ kd.transpose(-2, -1) / E ** 0.5 + bias
    p = torch.softmax(scores, dim=-1)
    ref_out = p @ vd
    # dq_i = scale * sum_j p_ij (dp_ij - D_i) k_j, with dp_ij = do_i . v_j and D_i = do_i . o_i
    dp = go[:, :, rows] @ vd.transpose(-2, -1)
    ds = p * (dp - (go[:, :, rows] * ref_out).sum(-1, keepdim=True))
    ref_dq = ds @ kd / E ** 0.5
    report["out_err"] = (out.detach().double()[:, :, rows] - ref_out).abs().max().item()
    report["dq_err"] = (q.grad.double()[:, :, rows] - ref_dq).abs().max().item()
    # Every row of probabilities sums to one, and every row of dS to zero, so
    # sum_j dv_j = sum_i do_i and sum_j dk_j = 0 (and sum_j dmask_j = 0).
    report["dv_sum_err"] = (v.grad.double().sum(-2) - go.sum(-2)).abs().max().item()
    report["dv_sum_scale"] = go.abs().sum(-2).max().item()
    report["dk_sum_err"] = k.grad.double().sum(-2).abs().max().item()
    report["dk_sum_scale"] = k.grad.double().abs().sum(-2).max().item()
    if mask is not None:
        report["dmask_sum_err"] = abs(mask.grad.double().sum().item())
        report["dmask_sum_scale"] = mask.grad.double().abs().sum().item()

    # The measurement itself must see an L×S matrix when there is one.
    if control:
        report["control"] = control_mib()
    print("REPORT " + json.dumps(report))
    """
)


# The double backward of a gradient penalty, with one head: the first-order
# gradients are recomputed block by block of query rows.
DOUBLE_BACKWARD_CHILD = CHILD_PRELUDE + textwrap.dedent(
    """
    def penalty_step(L):
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, H, L, E, generator=g, requires_grad=True) for _ in range(3))
        out = torch_selfattn.scaled_dot_product_attention(q, k, v)
        grad_q, = torch.autograd.grad(out.square().sum(), q, create_graph=True)
        grad_q.square().sum().backward()
        return q, k, v

    penalty_step(256)  # warm-up, as above
    before = peak_mib()
    leaves = penalty_step(L)
    after = peak_mib()
    finite = all(bool(torch.isfinite(t.grad).all()) and bool(t.grad.abs().sum() > 0) for t in leaves)
    print("REPORT " + json.dumps({"before": before, "after": after, "finite": finite, "control": control_mib()}))
    """
)


def run_child(mode, L, H, E, control, script=CHILD):
    """The child's report; with control, it also allocates one L×L matrix
    after the measurement and reports how much that grew the peak."""
    args = [mode, L, H, E, int(control)]
    result = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, (result.returncode, result.stdout[-2000:], result.stderr[-4000:])
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert len(lines) == 1, result.stdout + result.stderr[-2000:]
    return json.loads(lines[0][len("REPORT "):])


def check_values(report, L, H, E, mask):
    assert report["finite"], report
    shapes = [[1, H, L, E]] * 4 + ([[1, 1, 1, L]] if mask else [])
    assert report["shapes"] == shapes, report
    assert report["out_err"] < 1e-4, report
    assert report["dq_err"] < 1e-4, report
    assert report["dv_sum_err"] < 1e-5 * report["dv_sum_scale"] + 1e-4, report
    assert report["dk_sum_err"] < 1e-5 * report["dk_sum_scale"] + 1e-4, report
    if mask:
        assert report["dmask_sum_err"] < 1e-5 * report["dmask_sum_scale"] + 1e-5, report


def growth_bytes(report):
    return (report["after"] - report["before"]) * MiB


@pytest.mark.slow
@pytest.mark.parametrize("mask", [False, True], ids=["plain", "broadcast_mask_gradient"])
def test_forward_backward_at_8192_does_not_materialise_scores(mask):
    # With the mask: the gradient of a (1, 1, 1, S) mask sums dS over heads
    # and rows; it must be summed on the fly, not from a materialised
    # (B, H, L, S) gradient.
    L, H, E = 8192, 2, 64
    report = run_child("mask" if mask else "plain", L, H, E, control=True)
    check_values(report, L, H, E, mask)
    growth = growth_bytes(report)
    # Far below one L×S matrix per head (there are H of them: 512 MiB), and
    # below 64 MiB in all, of which about 16 MiB are the results themselves.
    assert growth < 64 * MiB, f"peak RSS grew by {growth / MiB:.1f} MiB ({report})"
    assert growth - results_bytes(L, H, E) < scores_bytes(L) / 8, report
    # And the measurement is sensitive: one L×S float32 matrix allocated
    # afterwards in the same child does show in the peak.
    assert report["control"] * MiB > scores_bytes(L) / 2, report


def linear_bound(L, H, E, threads):
    """The most the peak may grow by at L = S: the results, and per thread the
    backward's float32 scratch, all linear in S: at most the P and dP it may
    keep for a tile of 128 query rows (2 · 128 · S) and dK and dV of one head
    (2 · S · E, where they do not accumulate in the gradients themselves),
    plus 16 MiB for fixed-size tiles and the allocator."""
    per_thread = (2 * 128 * L + 2 * L * E) * 4
    return results_bytes(L, H, E) + threads * per_thread + 16 * MiB


@pytest.mark.slow
def test_forward_backward_at_32k_stays_within_a_linear_bound():
    # One L×S float32 matrix would be 4 GiB; the bound is 1/40 of it.
    L, H, E = 32768, 1, 16
    report = run_child("plain", L, H, E, control=False)
    check_values(report, L, H, E, mask=False)
    growth = growth_bytes(report)
    bound = linear_bound(L, H, E, report["threads"])
    assert growth < bound, f"peak RSS grew by {growth / MiB:.1f} MiB, bound {bound / MiB:.1f} MiB ({report})"
    assert bound < scores_bytes(L) / 40


@pytest.mark.slow
def test_double_backward_at_8192_does_not_materialise_scores():
    L = 8192
    report = run_child("double", L, 1, 16, control=True, script=DOUBLE_BACKWARD_CHILD)
    assert report["finite"], report
    growth = growth_bytes(report)
    # One head's L×S float32 matrix is 256 MiB; PyTorch's math path keeps several.
    assert growth < scores_bytes(L) / 4, f"peak RSS grew by {growth / MiB:.1f} MiB ({report})"
    assert report["control"] * MiB > scores_bytes(L) / 2, report
