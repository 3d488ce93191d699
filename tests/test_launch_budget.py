"""Launch budget of ``SlotAttention(backend="triton")``: the kernels one module call issues.

Counted on CPU under Triton's interpreter with :class:`triton_spy.OpCounter`: every Triton launch
plus every aten op that would run a device kernel (views and allocations excluded; the aten ops
inside our custom ops are counted; the interpreter's own host copies are not). The count does not
depend on the sizes (no N split on CPU), so small shapes stand for the benchmark's. A later change
that adds launches fails here: raise a budget only with a reason in docs/kernels.md ("Launch
budget"), which has the table these numbers come from.
"""
from __future__ import annotations

import os

import pytest
import torch

from slotvlm import SlotAttention
from triton_spy import OpCounter

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="interpreter tests: run with TRITON_INTERPRET=1 (conftest's default)"
)
pytest.importorskip("slotvlm.ops.fused")

# (fwd, fwd+bwd) per module call with iters=3 — what the fused design issues (docs/kernels.md)
BUDGET = {
    # forward: the slot noise (randn) + the whole-iteration kernel (issue 25); fwd+bwd: + the loss's
    # sum and its ones_like, the backward kernel, the sum of its per-program gradient rows, and the
    # contiguous copy of the expanded upstream gradient
    "drop-in": (2, 7),
    "masked": (2, 7),
    "varlen": (40, 131),  # packed inputs: the folded path
    "implicit-grad": (2, 7),  # every iteration in the forward kernel, the last one in the backward kernel
}
# the PyTorch reference counted the same way (for the ratio the targets are stated in)
REFERENCE = {"drop-in": (94, 306)}


def _run(name, backend):
    torch.manual_seed(0)
    kw = dict(iters=3, hidden_dim=32, backend=backend, implicit_grad=name == "implicit-grad")
    model = SlotAttention(6, 32, **kw)
    x = torch.randn(3, 20, 32)
    mask = None
    if name == "masked":
        mask = torch.rand(3, 20) > 0.3
    call = lambda inp: model(inp, mask=mask)  # noqa: E731
    if name == "varlen":
        x = torch.randn(45, 32)
        cu = torch.tensor([0, 20, 32, 45], dtype=torch.int32)
        call = lambda inp: model.forward_varlen(inp, cu, max_seqlen=20)  # noqa: E731
    x.requires_grad_()
    call(x).sum().backward()  # warm up (compiles nothing under the interpreter, but fills caches)
    model.zero_grad(set_to_none=True)
    x.grad = None
    with torch.no_grad(), OpCounter() as fwd:
        call(x)
    with OpCounter() as both:
        call(x).sum().backward()
    return fwd, both


@pytest.mark.parametrize("name", list(BUDGET))
def test_launches_per_module_call_within_budget(name):
    fwd, both = _run(name, "triton")
    budget_fwd, budget_both = BUDGET[name]
    detail = f"launches {dict(both.kernels)}, aten {dict(both.aten)}"
    assert fwd.total <= budget_fwd, f"{name} fwd: {fwd.total} kernels > budget {budget_fwd}"
    assert both.total <= budget_both, f"{name} fwd+bwd: {both.total} kernels > budget {budget_both}; {detail}"


def test_reference_count_and_ratio():
    """The reference's count (the denominator of the issue's launch targets) is what the docs say,
    and the fused path stays at or under 0.45x of it (the issue targets 0.25x; docs/kernels.md)."""
    fwd, both = _run("drop-in", "torch")
    assert (fwd.total, both.total) == REFERENCE["drop-in"]
    assert BUDGET["drop-in"][1] <= 0.45 * REFERENCE["drop-in"][1]


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # the interpreter's bf16 (numbers unchecked)
def test_autocast_casts_the_inputs_once_per_forward():
    """Under autocast the inputs are normalised and converted to the compute dtype once per forward,
    not once per iteration, and in one pass: the input LayerNorm kernel reads fp32 and stores bf16,
    so no token-sized aten conversion runs at all (counts token-sized casts and LayerNorm kernel
    launches; bf16 numbers are not checked here — the interpreter's bf16 is not exact)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    P, N, D = 2, 10, 16
    casts = []

    class Casts(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func._schema.name == "aten::_to_copy" and args[0].numel() == P * N * D:
                casts.append(args[0].dtype)
            return func(*args, **(kwargs or {}))

    import slotvlm.kernels.layer_norm as kln
    from triton.runtime.interpreter import InterpretedFunction

    normalised = []
    run = InterpretedFunction.run

    def spying_run(self, *args, grid=None, **kwargs):
        if self.fn.__name__ == "_layer_norm_fwd_kernel":
            named = dict(zip(self.arg_names, args), **kwargs)
            normalised.append((named["x"].dtype, named["y"].dtype))
        return run(self, *args, grid=grid, **kwargs)

    model = SlotAttention(4, D, iters=3, backend="triton")
    model.whole_iteration = False  # the folded path (the whole-iteration kernels read x in its dtype: no cast)
    x = torch.randn(P, N, D, requires_grad=True)
    with pytest.MonkeyPatch.context() as mp, torch.autocast("cpu", dtype=torch.bfloat16), Casts():
        mp.setattr(InterpretedFunction, "run", spying_run)
        out = model(x)
        out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and x.grad.dtype == torch.float32
    assert casts == []  # no aten conversion of x (forward) or of its gradient (backward)
    assert normalised == [(torch.float32, torch.bfloat16)]  # one fp32 -> bf16 LayerNorm for 3 iterations
    assert kln.MAX_D >= D


def test_traffic_model_covers_the_folded_kernels(monkeypatch):
    """``slotvlm.kernels.traffic.TRAFFIC`` has a per-launch (bytes read, bytes written, FLOPs) model for every
    folded kernel a module call launches, and each reads at least the token stream it must read."""
    from slotvlm.kernels.traffic import TRAFFIC
    from triton.runtime.interpreter import InterpretedFunction

    seen = {}
    run = InterpretedFunction.run

    def spying_run(self, *args, grid=None, **kwargs):
        name = self.fn.__name__
        if name in TRAFFIC:
            named = dict(zip(self.arg_names, args), **kwargs)
            seen[name] = (TRAFFIC[name](grid, named), named)
        return run(self, *args, grid=grid, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", spying_run)
    import slotvlm.nn.slot_attention as sa_module

    monkeypatch.setattr(sa_module, "_INPUT_NORM_KERNEL", "always")  # by default only under autocast
    P, N, D = 3, 20, 32
    x = torch.randn(P, N, D, requires_grad=True)
    folded = SlotAttention(6, D, iters=2, backend="triton")
    folded.whole_iteration = False
    folded(x).sum().backward()
    SlotAttention(6, D, iters=2, backend="triton")(x).sum().backward()  # the whole-iteration fwd + bwd
    assert set(seen) == set(TRAFFIC)
    x_bytes = P * N * D * 4
    for name, ((read, written, flops), named) in seen.items():
        assert all(isinstance(v, int) and v > 0 for v in (read, written, flops)), name
        if name != "_fold_dx_kernel":
            assert read >= x_bytes, name  # streams the (normalised) inputs once
    assert seen["_fold_dx_kernel"][0][1] == x_bytes  # dx written once
    read, written, _ = seen["_slot_iterations_fwd"][0]
    assert read >= 2 * x_bytes and written > P * 6 * D * 4  # x once per iteration; the slots and what it saves
    read, written, _ = seen["_slot_iterations_bwd"][0]
    assert read >= 3 * x_bytes and written >= x_bytes  # x once per iteration and once for dx; dx written once
