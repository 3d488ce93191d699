"""Argument checks of the public functions of ``slotvlm.ops`` and ``slotvlm.nn`` that used to let a
bad value reach a kernel or an einsum (issue 27): each raises ``ValueError`` naming the argument.
Both backends of ``SlotAttention.forward_varlen`` are checked (the triton one under the interpreter)."""
from __future__ import annotations

import math
import re

import pytest
import torch

from slotvlm import SlotAttention
from slotvlm.ops import gru_cell_ref, slot_attention_step_ref
from slotvlm.ops.fused import gru_cell, layer_norm, slot_attention_step, slot_attention_step_projected, \
    slot_attention_step_varlen

r = torch.randn
CU = torch.tensor([0, 4, 10], dtype=torch.int32)


def _raises(fn, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        fn()


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("kwargs,match", [
    (dict(cu_seqlens=CU, num_slots=0), "num_slots must be a positive int, got 0"),
    (dict(cu_seqlens=CU, num_slots=-2), "num_slots must be a positive int, got -2"),
    (dict(cu_seqlens=torch.tensor([0, 6, 4, 10], dtype=torch.int32)),
     "cu_seqlens must start at 0, be non-decreasing and end at T=10, got [0, 6, 4, 10]"),
    (dict(cu_seqlens=torch.tensor([1, 4, 10], dtype=torch.int32)), "cu_seqlens must start at 0"),
    (dict(cu_seqlens=torch.tensor([0, 4, 9], dtype=torch.int32)), "end at T=10, got [0, 4, 9]"),
    (dict(cu_seqlens=torch.tensor([0.0, 4.0, 10.0])), "cu_seqlens must have dtype torch.int32 or torch.int64"),
    (dict(cu_seqlens=torch.tensor([10], dtype=torch.int32)), "cu_seqlens must be 1-D with at least 2 entries"),
    (dict(cu_seqlens=[0, 4, 10]), "cu_seqlens must be a torch.Tensor, got list"),
    (dict(cu_seqlens=CU, max_seqlen=5), "max_seqlen=5 is shorter than the longest sequence in cu_seqlens (6)"),
    (dict(cu_seqlens=CU, max_seqlen=6.0), "max_seqlen must be a non-negative int, got 6.0"),
])
def test_forward_varlen_rejects(backend, kwargs, match, monkeypatch):
    if backend == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    m = SlotAttention(3, 8, backend=backend)
    _raises(lambda: m.forward_varlen(r(10, 8), **kwargs), match)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_forward_varlen_takes_int64_offsets(backend, monkeypatch):
    """int64 offsets (what torch.cumsum gives) are accepted and give what int32 gives."""
    if backend == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.manual_seed(0)
    m = SlotAttention(3, 8, backend=backend)
    x, slots = r(10, 8), r(2, 3, 8)
    want = m.forward_varlen(x, CU, slots=slots)
    torch.testing.assert_close(m.forward_varlen(x, CU.long(), slots=slots), want, rtol=0, atol=0)


def test_step_ops_reject(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q, k, kv = r(2, 3, 1, 8), r(2, 5, 1, 8), r(10, 1, 8)
    for step in (slot_attention_step, slot_attention_step_ref):
        _raises(lambda: step(r(2, 0, 1, 8), k, k, scale=1.0), "q must have at least one problem and one slot")
        _raises(lambda: step(q, k, k, scale=math.nan), "scale must be a finite number, got nan")
        _raises(lambda: step(q, k, k, scale=1.0, eps=-1.0), "eps must be a finite number >= 0, got -1.0")
        _raises(lambda: step(q, r(2, 5, 1, 7), r(2, 5, 1, 7), scale=1.0), "k must have shape [2, *, 1, 8]")
    _raises(lambda: slot_attention_step_varlen(r(2, 0, 1, 8), kv, kv, CU, scale=1.0), "q must have at least one")
    # with max_seqlen given the offsets are still read: a decreasing one never reaches the kernel
    _raises(lambda: slot_attention_step_varlen(q, kv, kv, torch.tensor([0, 6, 4], dtype=torch.int32), 6, scale=1.0),
            "cu_seqlens must start at 0, be non-decreasing and end at T=10, got [0, 6, 4]")
    _raises(lambda: slot_attention_step_varlen(q, kv, kv, CU, 3, scale=1.0), "max_seqlen=3 is shorter")
    _raises(lambda: slot_attention_step_varlen(q, kv, kv, CU[:2], scale=1.0), "cu_seqlens must have shape [3]")
    x, w = r(2, 5, 8), r(8, 8)
    _raises(lambda: slot_attention_step_projected(r(2, 0, 8), x, w, None, w, None, scale=1.0), "q must have at least")
    _raises(lambda: slot_attention_step_projected(r(2, 3, 8), x, w, r(7), w, None, scale=1.0), "b_k must have shape [8]")
    _raises(lambda: slot_attention_step_projected(r(2, 3, 8), x, w, None, w, None, scale=math.inf),
            "scale must be a finite number, got inf")


def test_gru_layer_norm_and_initial_slots_reject(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    cell = torch.nn.GRUCell(8, 8)
    _raises(lambda: gru_cell(r(4, 7), r(4, 8), cell), "weight_ih must have shape [24, 7]")
    _raises(lambda: gru_cell(r(4, 8), r(3, 8), cell), "h must have shape [4, D] (x's rows)")
    _raises(lambda: gru_cell_ref(r(4, 7), r(4, 8), cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh),
            "weight_ih must have shape [24, 7]")
    _raises(lambda: layer_norm(r(2, 8), None, None, -1.0), "eps must be a finite number >= 0, got -1.0")
    m = SlotAttention(3, 8, backend="torch")
    _raises(lambda: m.initial_slots(0, 3, device="cpu", dtype=torch.float32), "batch must be a positive int, got 0")
    _raises(lambda: m.initial_slots(2, 0, device="cpu", dtype=torch.float32), "num_slots must be a positive int, got 0")
