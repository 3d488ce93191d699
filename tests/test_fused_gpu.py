"""GPU checks of the fused slot attention (compiled Triton, bf16/fp16/fp32).

Rule (flash-attention's): in low precision the kernel's error against the fp64 reference must be
no worse than ~2x PyTorch's own error (the reference run in the same low precision). Run with the
interpreter OFF::

    TRITON_INTERPRET=0 python -m pytest tests/test_fused_gpu.py -q
"""
from __future__ import annotations

import os

import pytest
import torch

from slotvlm import SlotAttention
from slotvlm.ops.slot_attention_ref import slot_attention_step_ref

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="needs a CUDA GPU and TRITON_INTERPRET=0 (compiled kernels); none here",
)

LOW = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]


def _err(a, b):
    return (a.double() - b.double()).abs().max().item()


def _assert_within_2x(name, got, torch_low, exact, floor=1e-5):
    e_ours, e_torch = _err(got, exact), _err(torch_low, exact)
    assert e_ours <= 2 * e_torch + floor, f"{name}: ours {e_ours:.3e} vs PyTorch's {e_torch:.3e}"


def _step_all(fn, q, k, v, mask, du, da, **kw):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    u, a = fn(q, k, v, mask, scale=q.shape[-1] ** -0.5, eps=1e-8, return_attn=True, **kw)
    ((u.double() * du).sum() + (a.double() * da).sum()).backward()
    return u, a, q.grad, k.grad, v.grad


SHAPES = [
    pytest.param(32, 8, 1, 256, 256, False, id="vlm-like"),
    pytest.param(4, 7, 1, 64, 4096, True, id="object-discovery-like (N split)"),
    pytest.param(16, 8, 4, 64, 180, True, id="multihead"),
    pytest.param(8, 8, 1, 1024, 64, False, id="wide-D1024 (D split)"),
]


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("P,K,H,Dh,N,masked", SHAPES)
def test_step_low_precision_error_within_2x_torch(dtype, P, K, H, Dh, N, masked):
    from slotvlm.ops.fused import slot_attention_step

    torch.manual_seed(0)
    dev = "cuda"
    q = torch.randn(P, K, H, Dh, device=dev)
    k = torch.randn(P, N, H, Dh, device=dev)
    v = torch.randn(P, N, H, Dh, device=dev)
    mask = (torch.rand(P, N, device=dev) > 0.2) if masked else None
    du = torch.randn(P, K, H, Dh, device=dev, dtype=torch.float64)
    da = torch.randn(P, H, K, N, device=dev, dtype=torch.float64)
    exact = _step_all(slot_attention_step_ref, q.double(), k.double(), v.double(), mask, du, da)
    low = [t.to(dtype) for t in (q, k, v)]
    ref_low = _step_all(slot_attention_step_ref, *low, mask, du, da)
    ours = _step_all(slot_attention_step, *low, mask, du, da)
    for name, g, t, e in zip(("updates", "attn", "dq", "dk", "dv"), ours, ref_low, exact):
        assert g.dtype == dtype, name
        _assert_within_2x(name, g, t, e)


def test_step_fp32_on_gpu_is_exact():
    from slotvlm.ops.fused import slot_attention_step

    q, k, v = torch.randn(8, 7, 2, 40, device="cuda"), torch.randn(8, 300, 2, 40, device="cuda"), torch.randn(8, 300, 2, 40, device="cuda")
    u, _ = slot_attention_step(q, k, v, scale=0.2)
    want, _ = slot_attention_step_ref(q.double(), k.double(), v.double(), scale=0.2)
    torch.testing.assert_close(u.double(), want, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("dtype", LOW)
def test_varlen_step_low_precision(dtype):
    from slotvlm.ops.fused import slot_attention_step_varlen

    lengths = [180, 7, 0, 95]
    cu = torch.tensor([0, 180, 187, 187, 282], dtype=torch.int32, device="cuda")
    q = torch.randn(4, 8, 1, 128, device="cuda", dtype=dtype)
    k = torch.randn(282, 1, 128, device="cuda", dtype=dtype)
    v = torch.randn(282, 1, 128, device="cuda", dtype=dtype)
    u, _ = slot_attention_step_varlen(q, k, v, cu, scale=128**-0.5)
    N = max(lengths)
    mask = torch.arange(N, device="cuda")[None, :] < torch.tensor(lengths, device="cuda")[:, None]
    kp = torch.zeros(4, N, 1, 128, device="cuda", dtype=torch.float64)
    vp = torch.zeros_like(kp)
    kp[mask], vp[mask] = k.double(), v.double()
    exact, _ = slot_attention_step_ref(q.double(), kp, vp, mask, scale=128**-0.5)
    low, _ = slot_attention_step_ref(q, kp.to(dtype), vp.to(dtype), mask, scale=128**-0.5)
    _assert_within_2x("updates", u, low, exact)


@pytest.mark.parametrize("dtype", LOW)
def test_module_low_precision_error_within_2x_torch(dtype):
    torch.manual_seed(0)
    fast = SlotAttention(8, 256, backend="triton", deterministic_init=True).cuda()
    ref = SlotAttention(8, 256, backend="torch", deterministic_init=True).cuda()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(16, 256, 256, device="cuda")
    g = torch.randn(16, 8, 256, device="cuda", dtype=torch.float64)
    outs = []
    for model, dt in ((ref, torch.float64), (ref, dtype), (fast, dtype)):
        model = model.to(dt)
        xi = x.to(dt).requires_grad_()
        model.zero_grad(set_to_none=True)
        out = model(xi)
        (out.double() * g).sum().backward()
        outs.append((out.detach(), xi.grad, {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}))
    (e_out, e_dx, e_p), (t_out, t_dx, t_p), (o_out, o_dx, o_p) = outs
    _assert_within_2x("slots", o_out, t_out, e_out, floor=1e-3)
    _assert_within_2x("d inputs", o_dx, t_dx, e_dx, floor=1e-3)
    for name in e_p:
        _assert_within_2x(name, o_p[name], t_p[name], e_p[name], floor=1e-3)


def test_module_under_autocast_matches_reference_under_autocast():
    torch.manual_seed(0)
    fast = SlotAttention(8, 128, backend="triton", deterministic_init=True).cuda()
    ref = SlotAttention(8, 128, backend="torch", deterministic_init=True).cuda()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(8, 200, 128, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got, want = fast(x), ref(x)
    exact = ref.double()(x.double())
    _assert_within_2x("slots (autocast)", got, want, exact, floor=1e-3)


def test_auto_backend_keeps_fp64_on_the_reference():
    model = SlotAttention(4, 32, backend="auto", deterministic_init=True).cuda().double()
    x = torch.randn(1, 6, 32, device="cuda", dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(model, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", LOW)
def test_saturated_and_single_token_slots_low_precision_within_2x_torch(dtype):
    """The (dW − g)/den correction from the same dW values: a single-token slot and a slot that
    loses every token keep the gradients at PyTorch's own low-precision error."""
    from test_fused_slot_attention import _grads, _projected_plain, _ref_plain, saturated_problem

    q, x = saturated_problem(device="cuda")
    g = torch.randn(q.shape, device="cuda")
    exact = _grads(_ref_plain, q.double(), x.double(), g.double())
    low = _grads(_ref_plain, q.to(dtype), x.to(dtype), g)
    ours = _grads(_projected_plain, q.to(dtype), x.to(dtype), g)
    for name, a, t, e in zip(("updates", "dq", "dx"), ours, low, exact):
        _assert_within_2x(name, a, t, e)


def test_cuda_graph_replay_through_the_custom_ops_matches_eager():
    """A fixed-shape training step captured as a CUDA graph (torch.compile mode="reduce-overhead")
    through our custom ops gives eager's output and input gradient — the launch-bound shapes'
    host-cost remedy (docs/kernels.md)."""
    torch.manual_seed(0)
    model = SlotAttention(7, 64, hidden_dim=128, backend="triton", deterministic_init=True).cuda()
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    x = torch.randn(8, 512, 64, device="cuda")
    outs = []
    for fn in (model, compiled, compiled, compiled):  # eager, then capture + two replays
        xi = x.clone().requires_grad_()
        out = fn(xi)
        out.sum().backward()
        outs.append((out.detach().clone(), xi.grad.clone()))
    for out, grad in outs[1:]:
        torch.testing.assert_close(out, outs[0][0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(grad, outs[0][1], atol=1e-4, rtol=1e-4)
