"""The fused SlotAttention call is CUDA-graph capture-safe by construction (issue 25): its forward
and backward never read a tensor's value on the host (no ``.item()``, ``.tolist()``, ``bool(t)``,
``nonzero``), so nothing in it syncs or depends on values. Checked on CPU (kernels under the Triton
interpreter) by recording every aten op the call dispatches; the GPU capture/replay test is
tests/test_fused_gpu.py::test_cuda_graph_replay_through_the_custom_ops_matches_eager."""
from __future__ import annotations

import collections
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

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket.__qualname__ if hasattr(func, "overloadpacket") else func)] += 1
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


#: Tensor methods that read values on the host without always dispatching an aten op (``tolist``
#: on CPU does not); calls from the Triton interpreter itself (which runs kernels on the host) are
#: not ours and are left out
HOST_READS = ("tolist", "item", "__bool__", "numpy", "__int__", "__float__", "__index__")


def _syncs(fn) -> dict:
    rec = _Record()
    found: collections.Counter = collections.Counter()
    saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def spy(name, orig):
        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if f"{os.sep}triton{os.sep}" not in caller:
                found[f"Tensor.{name} from {os.path.basename(caller)}"] += 1
            return orig(self, *args, **kwargs)
        return wrapper

    try:
        for name, orig in saved.items():
            setattr(torch.Tensor, name, spy(name, orig))
        with rec:
            fn()
    finally:
        for name, orig in saved.items():
            setattr(torch.Tensor, name, orig)
    found.update({k: v for k, v in rec.ops.items() if k.startswith(SYNCING)})
    return dict(found)


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("implicit_grad", [False, True])
def test_fused_forward_backward_never_reads_values(heads, masked, implicit_grad):
    torch.manual_seed(0)
    m = SlotAttention(5, 32, heads=heads, backend="triton", implicit_grad=implicit_grad)
    x = torch.randn(2, 37, 32, requires_grad=True)
    mask = (torch.rand(2, 37) > 0.3) if masked else None
    m(x, mask=mask)  # first call: anything once-per-shape happens here

    def step():
        m(x, mask=mask).square().sum().backward()

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
