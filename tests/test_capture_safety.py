"""The fused SlotAttention call is CUDA-graph capture-safe by construction (issue 25): its forward
and backward never read a tensor's value on the host (no ``.item()``, ``.tolist()``, ``bool(t)``,
``nonzero``), so nothing in it syncs or depends on values. Checked on CPU (kernels under the Triton
interpreter) by recording every aten op the call dispatches and spying on the Python calls that
sync or build host tensors (``Tensor.cpu``, ``.to("cpu")``, ``torch.cuda.synchronize``,
``torch.tensor``); the GPU capture/replay tests (``torch.cuda.CUDAGraph`` for a forward,
``make_graphed_callables`` for forward+backward; skipped without CUDA) are at the end, and
tests/test_fused_gpu.py::test_cuda_graph_replay_through_the_custom_ops_matches_eager covers
``torch.compile(mode="reduce-overhead")``."""
from __future__ import annotations

import collections
import contextlib
import os
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from slotvlm import SlotAttention

# aten ops that read values on the host (a device sync on CUDA; a capture error under a graph)
SYNCING = ("aten._local_scalar_dense", "aten.nonzero", "aten.item", "aten.equal", "aten.is_nonzero",
           "aten.masked_select", "aten.unique")


class _Record(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self.to_cpu = collections.Counter()  # copies asked for explicitly onto the CPU

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops[str(func.overloadpacket.__qualname__ if hasattr(func, "overloadpacket") else func)] += 1
        self.ops[str(func)] += 1
        if str(func).startswith("aten._to_copy") and _is_cpu(kwargs.get("device")):
            self.to_cpu[str(func)] += 1
        return func(*args, **kwargs)


#: Tensor methods that read values on the host without always dispatching an aten op (``tolist``
#: on CPU does not); calls from the Triton interpreter itself (which runs kernels on the host) are
#: not ours and are left out
HOST_READS = ("tolist", "item", "__bool__", "numpy", "__int__", "__float__", "__index__")

#: Python-level calls that sync or make a host tensor per call, however they dispatch: a copy to
#: the CPU (``Tensor.cpu``; ``Tensor.to`` is checked for a CPU device below), a device sync, and
#: tensors built from Python values (on CUDA each is a host-to-device copy, under capture an error)
HOST_CALLS = ((torch.Tensor, "cpu"), (torch.cuda, "synchronize"), (torch, "tensor"), (torch, "as_tensor"),
              (torch, "from_numpy"))

#: aten ops that make a tensor from host data (``torch.tensor(...)`` dispatches ``lift_fresh``)
FROM_HOST = ("aten.lift_fresh", "aten.lift_fresh_copy")


def _is_cpu(arg) -> bool:
    return (isinstance(arg, str) and arg.startswith("cpu")) or (isinstance(arg, torch.device) and arg.type == "cpu")


def _syncs(fn) -> dict:
    """What ``fn()`` did that syncs or reads values on the host: ``{description: count}``."""
    rec = _Record()
    found: collections.Counter = collections.Counter()
    patched = [(torch.Tensor, name) for name in HOST_READS] + list(HOST_CALLS) + [(torch.Tensor, "to")]
    saved = [(owner, name, getattr(owner, name)) for owner, name in patched]

    def ours(depth=2) -> str | None:
        caller = sys._getframe(depth).f_code.co_filename
        return None if f"{os.sep}triton{os.sep}" in caller else os.path.basename(caller)

    def spy(owner, name, orig):
        label = f"{getattr(owner, '__name__', owner)}.{name}"

        def wrapper(*args, **kwargs):
            where = ours()
            if where and (name != "to" or any(_is_cpu(a) for a in (*args[1:], *kwargs.values()))):
                found[f"{label} from {where}"] += 1
            return orig(*args, **kwargs)
        return wrapper

    try:
        for owner, name, orig in saved:
            setattr(owner, name, spy(owner, name, orig))
        with rec:
            fn()
    finally:
        for owner, name, orig in saved:
            setattr(owner, name, orig)
    found.update({k: v for k, v in rec.ops.items() if k.startswith(SYNCING + FROM_HOST)})
    found.update({f"{k} to cpu": v for k, v in rec.to_cpu.items()})
    return dict(found)


def test_the_recorder_sees_each_kind_of_host_sync():
    """The recorder itself: every kind of call the tests below must not make is caught."""
    x = torch.randn(3)
    assert "aten._local_scalar_dense.default" in _syncs(lambda: x.sum().item())
    assert any(k.startswith("Tensor.tolist") for k in _syncs(lambda: x.tolist()))
    assert any(k.startswith("Tensor.cpu") for k in _syncs(lambda: x.cpu()))
    assert any(k.startswith("Tensor.to") for k in _syncs(lambda: x.to("cpu")))
    assert any(k.startswith("torch.tensor") for k in _syncs(lambda: torch.tensor([1.0, 2.0])))
    assert any(k.startswith("aten.lift_fresh") for k in _syncs(lambda: torch.tensor([1.0, 2.0])))
    assert any(k.startswith("aten._to_copy") for k in _syncs(lambda: torch.ops.aten._to_copy(x, device="cpu")))

    def sync():
        with contextlib.suppress(AssertionError, RuntimeError):  # a CPU-only build raises after the spy saw it
            torch.cuda.synchronize()

    assert any(k.startswith("torch.cuda.synchronize") for k in _syncs(sync))
    assert _syncs(lambda: x * 2 + 1) == {}


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("implicit_grad", [False, True])
@pytest.mark.parametrize("train", [False, True], ids=["fwd-no-grad", "fwd+bwd"])
def test_fused_forward_backward_never_reads_values(heads, masked, implicit_grad, train):
    torch.manual_seed(0)
    m = SlotAttention(5, 32, heads=heads, backend="triton", implicit_grad=implicit_grad)
    x = torch.randn(2, 37, 32, requires_grad=train)
    mask = (torch.rand(2, 37) > 0.3) if masked else None

    def step():
        if train:
            m(x, mask=mask).square().sum().backward()
        else:
            with torch.no_grad():
                m(x, mask=mask)

    step()  # first call: anything once-per-shape (checks, launch plans) happens here
    assert _syncs(step) == {}


@pytest.mark.parametrize("heads", [1, 2])
def test_attention_maps_never_read_values(heads):
    """return_attn=True (the maps reach the loss too) is as capture-safe as the slots alone."""
    torch.manual_seed(0)
    m = SlotAttention(5, 32, heads=heads, backend="triton")
    x = torch.randn(2, 37, 32, requires_grad=True)

    def step():
        slots, attn = m(x, return_attn=True)
        (slots.sum() + attn.square().sum()).backward()

    step()
    assert _syncs(step) == {}


def test_varlen_with_max_seqlen_is_sync_free_while_capturing(monkeypatch):
    """forward_varlen reads cu_seqlens once to check it (a host sync) — except while a CUDA graph
    is captured or torch.compile traces, where it must not (then max_seqlen is required)."""
    import slotvlm._checks as checks

    torch.manual_seed(0)
    m = SlotAttention(5, 32, backend="triton")
    x = torch.randn(30, 32, requires_grad=True)
    cu = torch.tensor([0, 12, 30], dtype=torch.int32)
    want = m.forward_varlen(x, cu, slots=torch.zeros(2, 5, 32))
    assert _syncs(lambda: m.forward_varlen(x, cu, slots=torch.zeros(2, 5, 32))) != {}  # the check reads values
    monkeypatch.setattr(checks, "_tracing", lambda: True)
    with pytest.raises(ValueError, match="max_seqlen must be given"):
        m.forward_varlen(x, cu)
    got = {}

    def step():
        got["out"] = m.forward_varlen(x, cu, max_seqlen=18, slots=torch.zeros(2, 5, 32))
        got["out"].sum().backward()

    assert _syncs(step) == {}
    torch.testing.assert_close(got["out"], want, rtol=0, atol=0)


def _interpreted() -> bool:
    from slotvlm.kernels.slot_attention import _INTERPRET  # noqa: PLC0415  (fixed when triton decorated them)

    return _INTERPRET


_SKIP_NO_GPU = pytest.mark.skipif(
    not torch.cuda.is_available() or _interpreted(),
    reason="CUDA graphs need a CUDA GPU and compiled kernels (TRITON_INTERPRET=0); the call's capture "
    "safety is checked on CPU by the tests above",
)


def _NEEDS_CUDA(fn):
    return pytest.mark.cuda(_SKIP_NO_GPU(fn))  # -m cuda: picked up by bench/gpu_check.py


def _graph_case(heads: int):
    torch.manual_seed(0)
    # deterministic_init: no noise drawn per call, so eager and the replay see the same start
    m = SlotAttention(7, 64, heads=heads, backend="triton", deterministic_init=True).cuda()
    xs = [torch.randn(8, 512, 64, device="cuda") for _ in range(3)]
    return m, xs


@_NEEDS_CUDA
@pytest.mark.parametrize("heads", [1, 2])
def test_cuda_graph_forward_replay_matches_eager(heads):
    """Inference: one SlotAttention forward captured with torch.cuda.CUDAGraph at a static shape,
    replayed on new data copied into the static input, equals eager (docs/kernels.md)."""
    m, xs = _graph_case(heads)
    static_x = xs[0].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(3):  # warm-up: Triton compiles, autotunes and the per-shape caches fill here
            m(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_out = m(static_x)
    for x in xs[1:]:
        static_x.copy_(x)
        graph.replay()
        with torch.no_grad():
            want = m(x)
        torch.testing.assert_close(static_out, want, atol=1e-5, rtol=1e-4)


@_NEEDS_CUDA
@pytest.mark.parametrize("heads", [1, 2])
def test_make_graphed_callables_training_step_matches_eager(heads):
    """Training: SlotAttention captured forward and backward with
    torch.cuda.graphs.make_graphed_callables; each replay's output, input gradient and parameter
    gradients equal an eager copy's on the same data."""
    import copy

    m, xs = _graph_case(heads)
    eager = copy.deepcopy(m)
    sample = xs[0].clone().requires_grad_()
    # allow_unused_input: with deterministic_init the slots' log-sigma takes no part
    graphed = torch.cuda.make_graphed_callables(m, (sample,), allow_unused_input=True)
    for x in xs[1:]:
        g = torch.randn(8, 7, 64, device="cuda")
        outs = []
        for mod in (graphed, eager):
            mod.zero_grad(set_to_none=True)
            xi = x.clone().requires_grad_()
            out = mod(xi)
            out.backward(g)
            grads = {n: p.grad for n, p in (m if mod is graphed else eager).named_parameters() if p.grad is not None}
            outs.append((out.detach().clone(), xi.grad.clone(), grads))
        (o, dx, dp), (o_e, dx_e, dp_e) = outs
        torch.testing.assert_close(o, o_e, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(dx, dx_e, atol=1e-5, rtol=1e-4)
        assert dp.keys() == dp_e.keys()
        for name in dp:
            torch.testing.assert_close(dp[name], dp_e[name], atol=1e-4, rtol=1e-4, msg=name)
