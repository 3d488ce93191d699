"""Linear layers whose weight gradient is deferred to one GEMM over all iterations.

Slot attention applies the same small linear layers (the slot-side projections, the GRU's GEMMs,
the MLP) once per iteration. Plain autograd computes ``dW = δᵀa`` and ``db = Σ δ`` in every
iteration and then adds the iterations' results: per layer and iteration three kernels plus two
accumulation adds. Here each iteration's backward only computes the input gradient ``δ W`` and
hands ``a`` and ``δ`` on as the gradients of two placeholder "tokens"; the tokens' node then forms
``dW = [δ_1 … δ_I]ᵀ [a_1 … a_I]`` with one GEMM and ``db`` with one reduction. Same numbers up to
summation order (fp32 accumulation either way); pure data flow through autograd, so it is
deterministic and ``torch.compile`` traces it.

Usage (``n`` = the number of differentiated calls, ``rows`` = the rows of every call's input)::

    toks = weight_grad_tokens(weight, bias, rows, n, dtype)
    for i in range(n):
        y = deferred_linear(a_i, weight, bias, toks[i])
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


class _WeightTokens(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, bias, rows: int, n: int, dtype):
        ctx.has_bias = bias is not None
        ctx.set_materialize_grads(False)
        out_f, in_f = weight.shape
        toks = []
        for _ in range(n):
            toks += [weight.new_empty((rows, in_f), dtype=dtype), weight.new_empty((rows, out_f), dtype=dtype)]
        return tuple(toks)

    @staticmethod
    def backward(ctx, *grads):
        acts = [g for g in grads[0::2] if g is not None]
        deltas = [g for g in grads[1::2] if g is not None]
        if not acts:
            return None, None, None, None, None
        a = torch.cat(acts) if len(acts) > 1 else acts[0]
        d = torch.cat(deltas) if len(deltas) > 1 else deltas[0]
        dw = torch.mm(d.t(), a)
        db = d.sum(0) if ctx.has_bias else None
        return dw, db, None, None, None


def _linear(a: Tensor, weight: Tensor, bias: Optional[Tensor], relu: bool) -> Tensor:
    """``F.linear`` (then ReLU). With a bias the ReLU rides in the GEMM's epilogue
    (``aten::_addmm_activation``: cuBLASLt's fused epilogue on CUDA): one kernel, not two — under
    autocast only when input, weight and bias already share one dtype (nothing for autocast to cast)."""
    if relu and bias is not None and (
        not torch.is_autocast_enabled(a.device.type) or a.dtype == weight.dtype == bias.dtype
    ):
        return torch._addmm_activation(bias, a, weight.t())
    out = torch.nn.functional.linear(a, weight, bias)
    return torch.relu(out) if relu else out


class _DeferredLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, weight, bias, tok_a, tok_d, relu: bool):
        dev = a.device.type
        if torch.is_autocast_enabled(dev) and a.is_floating_point():
            # what autocast's F.linear would do, done here so the saved input is the cast one
            # (its weight-gradient token then needs no cast in the backward)
            a = a.to(torch.get_autocast_dtype(dev))
        out = _linear(a, weight, bias, relu)
        ctx.save_for_backward(a, weight, out if relu else None)
        ctx.set_materialize_grads(False)
        return out

    @staticmethod
    def backward(ctx, grad):
        if grad is None:
            return None, None, None, None, None, None
        a, weight, out = ctx.saved_tensors
        if out is not None:  # through the ReLU
            grad = torch.ops.aten.threshold_backward(grad, out, 0)
        da = torch.mm(grad, weight.to(grad.dtype)) if ctx.needs_input_grad[0] else None
        return da, None, None, a, grad, None


def weight_grad_tokens(weight: Tensor, bias: Optional[Tensor], rows: int, n: int, dtype=None) -> list[tuple[Tensor, Tensor]]:
    """``n`` token pairs for :func:`deferred_linear` calls with ``rows``-row inputs (compute dtype
    ``dtype``, default the weight's: under autocast pass the autocast dtype)."""
    t = _WeightTokens.apply(weight, bias, int(rows), int(n), dtype or weight.dtype)
    return [(t[2 * i], t[2 * i + 1]) for i in range(n)]


def deferred_linear(
    a: Tensor, weight: Tensor, bias: Optional[Tensor], tokens: Optional[tuple[Tensor, Tensor]], relu: bool = False
) -> Tensor:
    """``F.linear(a [rows, in], weight, bias)`` (then ReLU with ``relu=True``); with a token pair
    its weight/bias gradient is formed by the tokens' node together with the other calls'.
    ``tokens=None``: the plain ops (autograd as usual)."""
    if tokens is None:
        if relu and torch.is_grad_enabled() and (a.requires_grad or weight.requires_grad):
            return torch.relu(torch.nn.functional.linear(a, weight, bias))
        return _linear(a, weight, bias, relu)
    return _DeferredLinear.apply(a, weight, bias, tokens[0], tokens[1], relu)
