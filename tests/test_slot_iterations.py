"""The whole-iteration kernel (kernels/slot_iterations.py, Triton interpreter, fp32) against the
PyTorch reference module, and the rule by which SlotAttention dispatches to it."""
from __future__ import annotations

import pytest
import torch

import slotvlm.kernels.slot_iterations as si
from slotvlm import SlotAttention


def _pair(k, d, hidden, iters=3, init="gaussian", **kw):
    fused = SlotAttention(k, d, iters=iters, hidden_dim=hidden, init=init, backend="triton", **kw)
    ref = SlotAttention(k, d, iters=iters, hidden_dim=hidden, init=init, backend="torch", **kw)
    ref.load_state_dict(fused.state_dict())
    return fused, ref


@pytest.fixture
def launches(monkeypatch):
    """The ``iters`` of every whole-iteration launch made while the test runs."""
    calls = []
    real = si.slot_iterations

    def spy(*args, **kwargs):
        calls.append(kwargs["iters"])
        return real(*args, **kwargs)

    monkeypatch.setattr(si, "slot_iterations", spy)
    return calls


# (B, N, D, K, hidden, masked): K = 1, odd N, N not a multiple of the 64-token tile, B = 1, D not a
# power of two, hidden wider than D, an all-padding row
SHAPES = [(2, 37, 32, 4, 64, False), (3, 130, 64, 7, 128, True), (1, 5, 20, 1, 20, False), (2, 64, 16, 16, 16, True),
          (1, 1, 8, 3, 8, True)]


@pytest.mark.parametrize("b,n,d,k,hidden,masked", SHAPES)
def test_no_grad_forward_matches_the_reference_in_one_launch(b, n, d, k, hidden, masked, launches):
    fused, ref = _pair(k, d, hidden)
    x = torch.randn(b, n, d)
    mask = None
    if masked:
        mask = torch.rand(b, n) > 0.3
        mask[0] = False  # an all-padding row: updates 0, never NaN
    with torch.no_grad():
        torch.manual_seed(1)
        out = fused(x, mask=mask)
        torch.manual_seed(1)  # the same slot noise: one randn of the same shape at the same point
        want = ref(x, mask=mask)
    assert launches == [3]
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, want, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("init,deterministic", [("gaussian", True), ("learned", False)])
def test_table_inits_and_given_slots(init, deterministic, launches):
    fused, ref = _pair(5, 24, 48, init=init)
    x = torch.randn(3, 50, 24)
    with torch.no_grad():
        torch.testing.assert_close(fused(x, deterministic_init=deterministic), ref(x, deterministic_init=deterministic),
                                   rtol=1e-5, atol=2e-5)
        start = torch.randn(3, 6, 24)  # given slots, a K other than the module's
        if init == "gaussian":
            torch.testing.assert_close(fused(x, slots=start), ref(x, slots=start), rtol=1e-5, atol=2e-5)
            torch.manual_seed(2)
            a = fused(x, num_slots=2)
            torch.manual_seed(2)
            torch.testing.assert_close(a, ref(x, num_slots=2), rtol=1e-5, atol=2e-5)
    assert launches == [3] * (3 if init == "gaussian" else 1)


def test_implicit_grad_runs_every_iteration_in_the_kernel(launches):
    """implicit_grad: the forward kernel runs all iterations, the backward kernel the last one."""
    fused, ref = _pair(4, 32, 64, iters=4, implicit_grad=True)
    x = torch.randn(2, 45, 32)
    mask = torch.rand(2, 45) > 0.2
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.manual_seed(3)
    a = fused(xa, mask=mask)
    torch.manual_seed(3)
    b = ref(xb, mask=mask)
    assert launches == [4]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-5)
    r = torch.randn_like(a)
    (a * r).sum().backward()
    (b * r).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(fused.named_parameters(), ref.parameters()):
        if q.grad is None:
            assert p.grad is None, name
        else:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_where_it_does_not_apply_the_folded_path_runs(launches, monkeypatch):
    x = torch.randn(2, 20, 32)
    fused, ref = _pair(4, 32, 64)
    with torch.no_grad():
        _, attn = fused(x, return_attn=True)  # attention maps are asked for
        wide = SlotAttention(4, 160, backend="triton")
        wide(torch.randn(1, 8, 160))  # D > 128
        SlotAttention(17, 32, backend="triton")(x)  # K > 16
        fused.whole_iteration = False
        fused(x)
        fused.whole_iteration = True
        monkeypatch.setenv("SLOTVLM_WHOLE_ITERATION", "0")
        fused(x)
        monkeypatch.delenv("SLOTVLM_WHOLE_ITERATION")
        fused(x)
    assert attn.shape == (2, 4, 20)
    assert launches == [3]  # only the last call


def test_torch_compile_traces_the_folded_path_under_no_grad(launches):
    torch._dynamo.reset()
    fused, ref = _pair(4, 16, 32, iters=2, deterministic_init=True)
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 11, 16)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), ref(x), rtol=1e-5, atol=2e-5)
        assert launches == []  # traced: the custom-op path
        fused(x)  # eager: the kernel
    assert launches == [2]


# (B, N, D, K, hidden, masked, init, implicit_grad, given slots): K = 1, odd N, N not a multiple of
# the tile, B = 1, D not a power of two, an all-padding row, each init and given slots
GRAD_CASES = [
    (2, 37, 32, 4, 64, False, "gaussian", False, False), (3, 130, 64, 7, 128, True, "gaussian", False, False),
    (1, 5, 20, 1, 20, False, "gaussian", False, False), (2, 64, 16, 16, 16, True, "gaussian", True, False),
    (2, 45, 32, 4, 64, False, "learned", False, False), (2, 45, 24, 3, 48, False, "gaussian", False, True),
    (1, 67, 24, 3, 48, True, "learned", True, False), (2, 33, 16, 2, 32, False, "gaussian", True, True),
]


@pytest.mark.parametrize("b,n,d,k,hidden,masked,init,implicit,given", GRAD_CASES)
def test_whole_iteration_backward_matches_the_reference(b, n, d, k, hidden, masked, init, implicit, given, launches):
    """With a graph the whole-iteration path runs too (forward and backward kernels, no folded
    iteration): the gradients of the inputs, every parameter and the given slots equal the
    reference's, for the full unrolled backward and implicit_grad."""
    from slotvlm.kernels import slot_iterations_bwd as kb

    calls = []
    real = kb.slot_iterations_bwd
    kb.slot_iterations_bwd = lambda *a, **kw: calls.append(kw["n_bwd"]) or real(*a, **kw)
    try:
        fused, ref = _pair(k, d, hidden, init=init, implicit_grad=implicit)
        x = torch.randn(b, n, d)
        mask = None
        if masked:
            mask = torch.rand(b, n) > 0.3
            mask[0] = False
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        s0 = torch.randn(b, k, d)
        sa, sb = (s0.clone().requires_grad_(), s0.clone().requires_grad_()) if given else (None, None)
        torch.manual_seed(1)
        out = fused(xa, mask=mask, slots=sa)
        torch.manual_seed(1)
        want = ref(xb, mask=mask, slots=sb)
        torch.testing.assert_close(out, want, rtol=1e-5, atol=2e-5)
        r = torch.randn_like(out)
        (out * r).sum().backward()
        (want * r).sum().backward()
    finally:
        kb.slot_iterations_bwd = real
    assert launches == [3] and calls == [1 if implicit else 3]
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    if given:
        if implicit:
            assert sa.grad is None and sb.grad is None
        else:
            torch.testing.assert_close(sa.grad, sb.grad, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(fused.named_parameters(), ref.parameters()):
        if q.grad is None:
            assert p.grad is None, name
        else:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)
