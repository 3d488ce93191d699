"""Fused slot-attention ops: Triton kernels registered as ``torch.library`` custom ops.

Public functions (each has its plain-PyTorch reference in :mod:`slotvlm.ops.slot_attention_ref`):

- :func:`slot_attention_step` — one attention step, padded layout (optional padding mask).
- :func:`slot_attention_step_varlen` — the same over packed sequences (``cu_seqlens``).
- :func:`gru_cell` — ``nn.GRUCell`` with the gate math fused (GEMMs stay with cuBLAS).

Custom ops (opaque to ``torch.compile``, with fake implementations and autograd):
``slotvlm::slot_attn_fwd``, ``slotvlm::slot_attn_bwd``, ``slotvlm::gru_gates``,
``slotvlm::gru_gates_bwd``.

On CUDA tensors the kernels run compiled (autotuned); on CPU tensors they run under Triton's
interpreter, which needs ``TRITON_INTERPRET=1`` set before triton is first imported.
Supported dtypes: float32, float16, bfloat16 (softmax, sums and accumulators always in fp32).
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch
from torch import Tensor

from kernels import gru as _gru
from kernels import slot_attention as _sa

from .._checks import check_tensor, describe

__all__ = ["slot_attention_step", "slot_attention_step_varlen", "gru_cell", "gru_gates"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ------------------------------------------------------------------------------------- guard
def entry_guard(fn):
    """Decorator for the ops' implementations: every tensor argument must be on one device, CPU
    only under the interpreter, floating tensors in a supported dtype; tensors are made
    contiguous only when they are not already. Raises ``ValueError`` naming the argument."""
    import inspect

    names = list(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        bound = dict(zip(names, args))
        bound.update(kwargs)
        device = None
        for name, value in bound.items():
            if not isinstance(value, Tensor):
                continue
            if device is None:
                device = value.device
            elif value.device != device:
                raise ValueError(f"{name} must be on {device} like the other inputs, got {describe(value)}")
            if value.is_floating_point() and value.dtype not in SUPPORTED_DTYPES:
                raise ValueError(
                    f"{name}: the triton backend supports float32, float16 and bfloat16, got {describe(value)} "
                    "(use backend='torch' for other dtypes)"
                )
            if not value.is_contiguous():
                bound[name] = value.contiguous()
        if device is not None and device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
            raise ValueError(
                "the triton backend got CPU tensors but TRITON_INTERPRET is not 1; set TRITON_INTERPRET=1 "
                "before starting Python to run the kernels under the interpreter, or use backend='torch'"
            )
        if device is not None and device.type not in ("cpu", "cuda"):
            raise ValueError(f"the triton backend supports CPU (interpreter) and CUDA tensors, got device {device}")
        return fn(**bound)

    return wrapper


def _u8(mask: Optional[Tensor]) -> Optional[Tensor]:
    return None if mask is None else mask.view(torch.uint8)


# ------------------------------------------------------------------- slot attention custom ops
@torch.library.custom_op("slotvlm::slot_attn_fwd", mutates_args=())
@entry_guard
def _slot_attn_fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Optional[Tensor],
    cu_seqlens: Optional[Tensor],
    max_seqlen: int,
    scale: float,
    eps: float,
    return_attn: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    out, den, attn = _sa.slot_attention_fwd(
        q, k, v, _u8(mask), cu_seqlens, max_seqlen, scale=scale, eps=eps, return_attn=return_attn
    )
    if attn is None:
        attn = q.new_empty(0)
    return out, den, attn


@_slot_attn_fwd.register_fake
def _(q, k, v, mask, cu_seqlens, max_seqlen, scale, eps, return_attn):
    P, K, H, _ = q.shape
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    den = q.new_empty((P, H, K), dtype=torch.float32)
    if not return_attn:
        attn = q.new_empty(0)
    elif cu_seqlens is None:
        attn = q.new_empty((P, H, K, k.shape[1]))
    else:
        attn = q.new_empty((H, K, k.shape[0]))
    return out, den, attn


@torch.library.custom_op("slotvlm::slot_attn_bwd", mutates_args=())
@entry_guard
def _slot_attn_bwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Optional[Tensor],
    cu_seqlens: Optional[Tensor],
    max_seqlen: int,
    out: Tensor,
    dout: Tensor,
    den: Tensor,
    dattn: Optional[Tensor],
    scale: float,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    return _sa.slot_attention_bwd(
        q, k, v, _u8(mask), cu_seqlens, max_seqlen, out, dout, den, dattn, scale=scale, eps=eps
    )


@_slot_attn_bwd.register_fake
def _(q, k, v, mask, cu_seqlens, max_seqlen, out, dout, den, dattn, scale, eps):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _slot_attn_setup(ctx, inputs, output):
    q, k, v, mask, cu_seqlens, max_seqlen, scale, eps, return_attn = inputs
    out, den, _ = output
    ctx.save_for_backward(q, k, v, mask, cu_seqlens, out, den)
    ctx.max_seqlen, ctx.scale, ctx.eps, ctx.return_attn = max_seqlen, scale, eps, return_attn


def _slot_attn_backward(ctx, dout, dden, dattn):
    q, k, v, mask, cu_seqlens, out, den = ctx.saved_tensors
    if not ctx.return_attn:
        dattn = None
    dq, dk, dv = _slot_attn_bwd(
        q, k, v, mask, cu_seqlens, ctx.max_seqlen, out, dout, den, dattn, ctx.scale, ctx.eps
    )
    return dq, dk, dv, None, None, None, None, None, None


_slot_attn_fwd.register_autograd(_slot_attn_backward, setup_context=_slot_attn_setup)


# ---------------------------------------------------------------------------- GRU custom ops
@torch.library.custom_op("slotvlm::gru_gates", mutates_args=())
@entry_guard
def _gru_gates(gi: Tensor, gh: Tensor, h: Tensor) -> Tensor:
    return _gru.gru_gates_fwd(gi, gh, h)


@_gru_gates.register_fake
def _(gi, gh, h):
    return torch.empty_like(h, memory_format=torch.contiguous_format)


@torch.library.custom_op("slotvlm::gru_gates_bwd", mutates_args=())
@entry_guard
def _gru_gates_bwd(gi: Tensor, gh: Tensor, h: Tensor, dout: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return _gru.gru_gates_bwd(gi, gh, h, dout)


@_gru_gates_bwd.register_fake
def _(gi, gh, h, dout):
    return (
        torch.empty_like(gi, memory_format=torch.contiguous_format),
        torch.empty_like(gh, memory_format=torch.contiguous_format),
        torch.empty_like(h, memory_format=torch.contiguous_format),
    )


def _gru_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _gru_backward(ctx, dout):
    gi, gh, h = ctx.saved_tensors
    return _gru_gates_bwd(gi, gh, h, dout)


_gru_gates.register_autograd(_gru_backward, setup_context=_gru_setup)


# ---------------------------------------------------------------------------- public functions
def _check_step(q, k, v, *, varlen: bool):
    check_tensor("q", q, ndim=4, floating=True)
    P, K, H, Dh = q.shape
    if varlen:
        check_tensor("k", k, shape=(None, H, Dh), floating=True, device=q.device)
        check_tensor("v", v, shape=tuple(k.shape), floating=True, device=q.device)
    else:
        check_tensor("k", k, shape=(P, None, H, Dh), floating=True, device=q.device)
        check_tensor("v", v, shape=tuple(k.shape), floating=True, device=q.device)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")


def slot_attention_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Optional[Tensor] = None,
    *,
    scale: float,
    eps: float = 1e-8,
    return_attn: bool = False,
) -> tuple[Tensor, Optional[Tensor]]:
    """One fused slot-attention step (same contract as ``slot_attention_step_ref``).

    ``logits = q·kᵀ·scale``; softmax over the K slots, per head; ``+eps``; zero at padding;
    weighted mean over the N inputs; ``updates = attn·v``. Differentiable in q, k, v.

    Args:
        q: ``[B, K, H, Dh]`` slot queries. k, v: ``[B, N, H, Dh]``.
        mask: ``[B, N]`` bool, True = real token (an all-padding row gives zero updates).
        scale: logit multiplier (usually ``Dh ** -0.5``). eps: added after the softmax.
        return_attn: also return the softmax-over-slots attention ``[B, H, K, N]`` (0 at padding).

    Returns:
        ``(updates [B, K, H, Dh] in q's dtype, attn [B, H, K, N] or None)``.

    Example::

        q, k, v = torch.randn(2, 7, 1, 64), torch.randn(2, 4096, 1, 64), torch.randn(2, 4096, 1, 64)
        updates, _ = slot_attention_step(q.cuda(), k.cuda(), v.cuda(), scale=64 ** -0.5)
    """
    _check_step(q, k, v, varlen=False)
    if mask is not None:
        check_tensor("mask", mask, shape=(q.shape[0], k.shape[1]), dtype=torch.bool, device=q.device)
    out, _, attn = _slot_attn_fwd(q, k, v, mask, None, int(k.shape[1]), float(scale), float(eps), bool(return_attn))
    return out, (attn if return_attn else None)


def slot_attention_step_varlen(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor,
    max_seqlen: Optional[int] = None,
    *,
    scale: float,
    eps: float = 1e-8,
    return_attn: bool = False,
) -> tuple[Tensor, Optional[Tensor]]:
    """Fused slot-attention step over packed variable-length sequences (flash-attn's varlen API).

    Problem ``p`` owns tokens ``cu_seqlens[p] : cu_seqlens[p+1]`` of k and v; an empty sequence
    gives zero updates. Equal to :func:`slot_attention_step` on the zero-padded batch with a mask.

    Args:
        q: ``[P, K, H, Dh]``. k, v: ``[T, H, Dh]`` packed tokens, ``T = cu_seqlens[-1]``.
        cu_seqlens: int32 ``[P + 1]``, non-decreasing, starting at 0.
        max_seqlen: the longest sequence (computed from cu_seqlens, with a host sync, if None).
        scale, eps, return_attn: as in :func:`slot_attention_step`.

    Returns:
        ``(updates [P, K, H, Dh], attn [H, K, T] or None)`` (attention laid out like the tokens).
    """
    _check_step(q, k, v, varlen=True)
    check_tensor("cu_seqlens", cu_seqlens, shape=(q.shape[0] + 1,), dtype=torch.int32, device=q.device)
    if max_seqlen is None:
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        if int(cu_seqlens[0]) != 0 or bool((lengths < 0).any()) or int(cu_seqlens[-1]) != k.shape[0]:
            raise ValueError(
                f"cu_seqlens must start at 0, be non-decreasing and end at T={k.shape[0]}, got {cu_seqlens.tolist()}"
            )
        max_seqlen = int(lengths.max()) if lengths.numel() else 0
    out, _, attn = _slot_attn_fwd(
        q, k, v, None, cu_seqlens, int(max_seqlen), float(scale), float(eps), bool(return_attn)
    )
    return out, (attn if return_attn else None)


def gru_gates(gi: Tensor, gh: Tensor, h: Tensor) -> Tensor:
    """The GRU cell after its GEMMs: ``gi, gh [M, 3D]`` (gates r, z, n), ``h [M, D]`` → ``h' [M, D]``."""
    check_tensor("h", h, ndim=2, floating=True)
    M, D = h.shape
    check_tensor("gi", gi, shape=(M, 3 * D), dtype=h.dtype, device=h.device)
    check_tensor("gh", gh, shape=(M, 3 * D), dtype=h.dtype, device=h.device)
    return _gru_gates(gi, gh, h)


def gru_cell(x: Tensor, h: Tensor, cell: torch.nn.GRUCell) -> Tensor:
    """``cell(x, h)`` with the gate math fused: x ``[M, D_in]``, h ``[M, D]`` → ``[M, D]``.

    The two input/hidden GEMMs run through ``torch.nn.functional.linear`` (cuBLAS); autograd
    reaches the cell's weights and biases through them.
    """
    check_tensor("x", x, ndim=2, floating=True)
    check_tensor("h", h, shape=(x.shape[0], cell.hidden_size), floating=True, device=x.device)
    gi = torch.nn.functional.linear(x, cell.weight_ih, cell.bias_ih)
    gh = torch.nn.functional.linear(h, cell.weight_hh, cell.bias_hh)
    return gru_gates(gi, gh, h)
