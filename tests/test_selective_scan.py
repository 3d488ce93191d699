"""The selective scan: the Triton kernels (interpreter, fp32) and the PyTorch parallel scan against
the sequential fp64 reference, outputs and every gradient; the custom-op registration."""
import pytest
import torch
import torch.nn.functional as F

from slotvlm.ops.scan import _scan_fwd_op, selective_scan, selective_scan_parallel, selective_scan_ref

ARGS = ("u", "delta", "A", "B", "C", "D", "h0")


def make_inputs(R, T, Dc, S, *, dtype=torch.float64, a_scale=2.0, dt_shift=0.0):
    g = torch.Generator().manual_seed(R * 1000 + T * 10 + Dc + S)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    return {
        "u": rnd(R, T, Dc),
        "delta": F.softplus(rnd(R, T, Dc) + dt_shift),
        "A": -torch.rand(Dc, S, generator=g, dtype=dtype) * a_scale - 0.05,
        "B": rnd(R, T, S),
        "C": rnd(R, T, S),
        "D": rnd(Dc),
        "h0": rnd(R, Dc, S),
    }


def run_with_grads(fn, inputs, gy, gh, **kw):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    y, h = fn(*(leaves[k] for k in ARGS), **kw)
    loss = (y * gy.to(y.dtype)).sum() + (h * gh.to(h.dtype)).sum()
    grads = torch.autograd.grad(loss, [leaves[k] for k in ARGS])
    return y.detach(), h.detach(), dict(zip(ARGS, grads))


def assert_close(name, got, want, atol=1e-4, rtol=1e-4):
    # tolerances relative to the tensor's scale: gradients of long sequences reach O(100)
    scale = want.abs().max().clamp_min(1.0)
    torch.testing.assert_close(got.double(), want.double(), atol=atol * scale.item(), rtol=rtol, msg=name)


SHAPES = [
    pytest.param(2, 37, 20, 5, id="odd-T37-Dc20-S5"),
    pytest.param(3, 1, 7, 3, id="T1"),
    pytest.param(1, 70, 72, 2, id="3chunks-2channel-blocks"),
]


@pytest.mark.parametrize("R,T,Dc,S", SHAPES)
def test_triton_scan_matches_sequential_reference(R, T, Dc, S):
    x64 = make_inputs(R, T, Dc, S)
    gy = torch.randn(R, T, Dc, dtype=torch.float64)
    gh = torch.randn(R, Dc, S, dtype=torch.float64)
    y_ref, h_ref, g_ref = run_with_grads(selective_scan_ref, x64, gy, gh)
    x32 = {k: v.float() for k, v in x64.items()}
    y, h, g = run_with_grads(selective_scan, x32, gy, gh, backend="triton")
    assert y.dtype == torch.float32 and h.dtype == torch.float32
    assert_close("y", y, y_ref)
    assert_close("h_last", h, h_ref)
    for k in ARGS:
        assert_close(f"d{k}", g[k], g_ref[k])


def test_triton_scan_without_skip_or_initial_state():
    x = {k: v.float() for k, v in make_inputs(2, 19, 12, 4).items()}
    y, h = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], backend="triton")
    y_ref, h_ref = selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"])
    assert_close("y", y, y_ref)
    assert_close("h_last", h, h_ref)


def test_triton_scan_tiny_decays_stay_finite():
    # exp(delta * A) underflows to 0 in fp32: the kernel must not divide by it anywhere
    x64 = make_inputs(2, 40, 8, 3, a_scale=60.0, dt_shift=3.0)
    gy = torch.randn(2, 40, 8, dtype=torch.float64)
    gh = torch.randn(2, 8, 3, dtype=torch.float64)
    y_ref, h_ref, g_ref = run_with_grads(selective_scan_ref, x64, gy, gh)
    y, h, g = run_with_grads(selective_scan, {k: v.float() for k, v in x64.items()}, gy, gh, backend="triton")
    assert torch.isfinite(y).all() and all(torch.isfinite(v).all() for v in g.values())
    assert_close("y", y, y_ref)
    for k in ARGS:
        assert_close(f"d{k}", g[k], g_ref[k])


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_scan_continues_from_state(backend):
    """Scanning [0, t) then [t, T) from the carried state equals one scan of [0, T)."""
    x = {k: v.float() for k, v in make_inputs(2, 23, 10, 4).items()}
    y, h = selective_scan(*(x[k] for k in ARGS), backend=backend)
    cut = 9
    first = {k: (v[:, :cut] if k in ("u", "delta", "B", "C") else v) for k, v in x.items()}
    y1, h1 = selective_scan(*(first[k] for k in ARGS), backend=backend)
    second = {k: (v[:, cut:] if k in ("u", "delta", "B", "C") else v) for k, v in x.items()}
    second["h0"] = h1
    y2, h2 = selective_scan(*(second[k] for k in ARGS), backend=backend)
    assert_close("y", torch.cat([y1, y2], dim=1), y, atol=1e-5)
    assert_close("h_last", h2, h, atol=1e-5)


def test_parallel_scan_matches_sequential_reference():
    x64 = make_inputs(3, 45, 9, 6)
    gy = torch.randn(3, 45, 9, dtype=torch.float64)
    gh = torch.randn(3, 9, 6, dtype=torch.float64)
    y_ref, h_ref, g_ref = run_with_grads(selective_scan_ref, x64, gy, gh)
    y, h, g = run_with_grads(selective_scan_parallel, x64, gy, gh)
    assert_close("y", y, y_ref, atol=1e-10, rtol=1e-10)
    assert_close("h_last", h, h_ref, atol=1e-10, rtol=1e-10)
    for k in ARGS:
        assert_close(f"d{k}", g[k], g_ref[k], atol=1e-10, rtol=1e-10)


def test_reference_matches_explicit_recurrence():
    """The reference against the recurrence written out element by element (one row, one channel)."""
    x = make_inputs(1, 6, 2, 3)
    y, h = selective_scan_ref(*(x[k] for k in ARGS))
    d = 1
    state = x["h0"][0, d].clone()
    for t in range(6):
        state = torch.exp(x["delta"][0, t, d] * x["A"][d]) * state + x["delta"][0, t, d] * x["B"][0, t] * x["u"][0, t, d]
        expect = (x["C"][0, t] * state).sum() + x["D"][d] * x["u"][0, t, d]
        torch.testing.assert_close(y[0, t, d], expect)
    torch.testing.assert_close(h[0, d], state)


def test_opcheck():
    x = {k: v.float() for k, v in make_inputs(1, 5, 4, 2).items()}
    args = tuple(x[k].requires_grad_() for k in ARGS)
    torch.library.opcheck(_scan_fwd_op, args)


def test_compile_fullgraph_traces_the_op():
    x = {k: v.float() for k, v in make_inputs(1, 9, 5, 2).items()}

    def f(*args):
        y, h = selective_scan(*args, backend="triton")
        return y.sum() + h.sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    args = [x[k].requires_grad_() for k in ARGS]
    out = compiled(*args)
    out.backward()
    grads = [a.grad.clone() for a in args]
    want = f(*[a.detach().requires_grad_() for a in args])
    torch.testing.assert_close(out, want)
    assert all(torch.isfinite(gr).all() for gr in grads)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda x: x.update(u=x["u"][0]), "u must have 3 dimensions"),
        (lambda x: x.update(delta=x["delta"][:, :3]), "delta must have shape"),
        (lambda x: x.update(A=x["A"][:2]), "A must have shape"),
        (lambda x: x.update(B=x["B"][..., :1]), "B must have shape"),
        (lambda x: x.update(D=x["D"][:1]), "D must have shape"),
        (lambda x: x.update(h0=x["h0"][:1]), "h0 must have shape"),
        (lambda x: x.update(u=x["u"].long()), "u must be a floating-point"),
    ],
)
def test_bad_arguments_raise_value_error(change, match):
    x = make_inputs(2, 5, 4, 3, dtype=torch.float32)
    change(x)
    with pytest.raises(ValueError, match=match):
        selective_scan(*(x[k] for k in ARGS), backend="torch")


def test_bad_backend_raises_value_error():
    x = make_inputs(1, 3, 2, 2, dtype=torch.float32)
    with pytest.raises(ValueError, match="backend"):
        selective_scan(*(x[k] for k in ARGS), backend="cuda")
