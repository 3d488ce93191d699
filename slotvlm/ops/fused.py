"""Fused slot-attention ops: Triton kernels registered as ``torch.library`` custom ops.

Public functions (each has its plain-PyTorch reference in :mod:`slotvlm.ops.slot_attention_ref`):

- :func:`slot_attention_step` — one attention step, padded layout (optional padding mask).
- :func:`slot_attention_step_varlen` — the same over packed sequences (``cu_seqlens``).
- :func:`slot_attention_step_projected` — one head with the k/v projections folded into the slots
  (what ``SlotAttention(backend="triton")`` runs for ``heads=1``).
- :func:`gru_cell` — ``nn.GRUCell`` with the gate math fused (GEMMs stay with cuBLAS).
- :func:`layer_norm` — LayerNorm over the last dimension that writes its output in a chosen dtype
  (the input LayerNorm of the folded one-head path: under autocast, normalised and cast in one pass).

Custom ops (opaque to ``torch.compile``, with fake implementations and autograd):
``slotvlm::slot_attn_fwd``, ``slotvlm::slot_attn_bwd``, ``slotvlm::gru_gates``,
``slotvlm::gru_gates_bwd``, ``slotvlm::layer_norm_fwd``, ``slotvlm::layer_norm_bwd``.

On CUDA tensors the kernels run compiled (autotuned); on CPU tensors they run under Triton's
interpreter, which needs ``TRITON_INTERPRET=1`` set before triton is first imported.
Supported dtypes: float32, float16, bfloat16 (softmax, sums and accumulators always in fp32).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from slotvlm.kernels import gru as _gru
from slotvlm.kernels import layer_norm as _ln
from slotvlm.kernels import slot_attention as _sa
from slotvlm.kernels import slot_attention_deferred as _sd

from .._checks import check_cu_seqlens, check_gru_args, check_number, check_step_args, check_tensor, describe
from ..backend import FUSED_DTYPES

__all__ = [
    "slot_attention_step", "slot_attention_step_varlen", "slot_attention_step_projected", "gru_cell", "gru_gates",
    "layer_norm",
]

SUPPORTED_DTYPES = FUSED_DTYPES


# ------------------------------------------------------------------------------------- guard
# Triton decides interpreted-or-compiled when the kernels are decorated (at import), so the guard
# reads the switch once too instead of reading the environment on every call.
_INTERPRETED = _sa._INTERPRET


def entry_guard(fn):
    """Decorator for the ops' implementations: every tensor argument must be on one device, CPU
    only under the interpreter, floating tensors in a supported dtype; tensors are made
    contiguous only when they are not already. Raises ``ValueError`` naming the argument.

    Cheap by design (a loop over the arguments, no dict, no environment read): it runs on every
    op call. The module (:class:`slotvlm.SlotAttention`) validates its inputs once per call and
    then calls the unchecked helpers below, so per-iteration ops pay only this guard."""
    import inspect

    names = tuple(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if kwargs:
            args = args + tuple(kwargs[n] for n in names[len(args):])
        device = None
        fixed = None
        for i, value in enumerate(args):
            if not isinstance(value, Tensor):
                continue
            if device is None:
                device = value.device
            elif value.device != device:
                raise ValueError(f"{names[i]} must be on {device} like the other inputs, got {describe(value)}")
            if value.dtype not in SUPPORTED_DTYPES and value.is_floating_point():
                raise ValueError(
                    f"{names[i]}: the triton backend supports float32, float16 and bfloat16, got {describe(value)} "
                    "(use backend='torch' for other dtypes)"
                )
            if not value.is_contiguous():
                fixed = list(args) if fixed is None else fixed
                fixed[i] = value.contiguous()
        if device is not None and device.type != "cuda":
            if device.type != "cpu":
                raise ValueError(f"the triton backend supports CPU (interpreter) and CUDA tensors, got device {device}")
            if not _INTERPRETED:
                raise ValueError(
                    "the triton backend got CPU tensors but TRITON_INTERPRET is not 1; set TRITON_INTERPRET=1 "
                    "before starting Python to run the kernels under the interpreter, or use backend='torch'"
                )
        return fn(*(args if fixed is None else fixed))

    return wrapper


def _fake_attn(like: Tensor, tokens: Tensor, cu_seqlens, P: int, H: int, K: int, return_attn: bool) -> Tensor:
    """The attention output's shape: ``[P, H, K, N]`` padded, ``[H, K, T]`` packed, ``[0]`` if not asked."""
    if not return_attn:
        return like.new_empty(0)
    if cu_seqlens is None:
        return like.new_empty((P, H, K, tokens.shape[1]))
    return like.new_empty((H, K, tokens.shape[0]))


def _u8(mask: Optional[Tensor]) -> Optional[Tensor]:
    return None if mask is None else mask.view(torch.uint8)


# ------------------------------------------------------------------- slot attention custom ops
@torch.library.custom_op("slotvlm::slot_attn_fwd", mutates_args=())
@entry_guard
def _slot_attn_fwd(
    q: Tensor,
    k: Tensor,
    v: Optional[Tensor],
    mask: Optional[Tensor],
    cu_seqlens: Optional[Tensor],
    bias: Optional[Tensor],
    max_seqlen: int,
    scale: float,
    eps: float,
    return_attn: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    # v=None: the values are the keys (the projected form); one tensor, read once
    out, den, attn = _sa.slot_attention_fwd(
        q, k, k if v is None else v, _u8(mask), cu_seqlens, max_seqlen,
        scale=scale, eps=eps, return_attn=return_attn, bias=bias,
    )
    if attn is None:
        attn = q.new_empty(0)
    return out, den, attn


@_slot_attn_fwd.register_fake
def _(q, k, v, mask, cu_seqlens, bias, max_seqlen, scale, eps, return_attn):
    P, K, H, _ = q.shape
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    den = q.new_empty((P, H, K), dtype=torch.float32)
    return out, den, _fake_attn(q, k, cu_seqlens, P, H, K, return_attn)


@torch.library.custom_op("slotvlm::slot_attn_bwd", mutates_args=())
@entry_guard
def _slot_attn_bwd(
    q: Tensor,
    k: Tensor,
    v: Optional[Tensor],
    mask: Optional[Tensor],
    cu_seqlens: Optional[Tensor],
    bias: Optional[Tensor],
    max_seqlen: int,
    out: Tensor,
    dout: Tensor,
    den: Tensor,
    dattn: Optional[Tensor],
    scale: float,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dq, dk, dv, dbias = _sa.slot_attention_bwd(
        q, k, k if v is None else v, _u8(mask), cu_seqlens, max_seqlen, out, dout, den, dattn,
        scale=scale, eps=eps, bias=bias, shared_kv=v is None,
    )
    empty = den.new_empty(0)
    return dq, dk, (dv if dv is not None else empty), (dbias if dbias is not None else empty)


@_slot_attn_bwd.register_fake
def _(q, k, v, mask, cu_seqlens, bias, max_seqlen, out, dout, den, dattn, scale, eps):
    dbias = torch.empty_like(bias) if bias is not None else den.new_empty(0)
    dv = torch.empty_like(v) if v is not None else den.new_empty(0)
    return torch.empty_like(q), torch.empty_like(k), dv, dbias


def _slot_attn_setup(ctx, inputs, output):
    q, k, v, mask, cu_seqlens, bias, max_seqlen, scale, eps, return_attn = inputs
    out, den, _ = output
    ctx.save_for_backward(q, k, v, mask, cu_seqlens, bias, out, den)
    ctx.max_seqlen, ctx.scale, ctx.eps, ctx.return_attn = max_seqlen, scale, eps, return_attn


def _slot_attn_backward(ctx, dout, dden, dattn):
    q, k, v, mask, cu_seqlens, bias, out, den = ctx.saved_tensors
    if not ctx.return_attn:
        dattn = None
    dq, dk, dv, dbias = _slot_attn_bwd(
        q, k, v, mask, cu_seqlens, bias, ctx.max_seqlen, out, dout, den, dattn, ctx.scale, ctx.eps
    )
    dv = dv if v is not None else None
    return dq, dk, dv, None, None, (dbias if bias is not None else None), None, None, None, None


_slot_attn_fwd.register_autograd(_slot_attn_backward, setup_context=_slot_attn_setup)


# ------------------------------------------- the folded one-head step with the input gradient deferred
# Every iteration of the module attends over the same normalised inputs x. Rather than each
# iteration's backward writing a full-size dx that autograd then adds up, the iteration ops take a
# pair of "gradient tokens" made by ``slotvlm::slot_x_tokens(x)``: an iteration's backward returns
# its small per-problem tensors (ds, W [rows, 2, BLOCK_K]; q', du' [P, 2, K, D]) as the gradient of
# its tokens, and the tokens' op computes dx for all iterations in one pass (``slot_attn_fold_dx``),
# written once. Pure data flow through autograd: deterministic, and traceable by torch.compile.
@torch.library.custom_op("slotvlm::slot_x_tokens", mutates_args=())
@entry_guard
def _slot_x_tokens(x: Tensor, cu_seqlens: Optional[Tensor], max_seqlen: int, P: int, K: int, n: int) -> list[Tensor]:
    shape_s, shape_q = _sd.token_shapes(x, cu_seqlens, P, K)
    out = []
    for _ in range(n):
        out += [x.new_empty(shape_s), x.new_empty(shape_q)]
    return out


@_slot_x_tokens.register_fake
def _(x, cu_seqlens, max_seqlen, P, K, n):
    shape_s, shape_q = _sd.token_shapes(x, cu_seqlens, P, K)
    out = []
    for _ in range(n):
        out += [x.new_empty(shape_s), x.new_empty(shape_q)]
    return out


def _tokens_setup(ctx, inputs, output):
    x, cu_seqlens, max_seqlen, *_ = inputs
    ctx.save_for_backward(x, cu_seqlens)
    ctx.max_seqlen = max_seqlen


def _tokens_backward(ctx, grads):
    x, cu_seqlens = ctx.saved_tensors
    dx = _slot_attn_fold_dx(torch.stack(grads[0::2]), torch.stack(grads[1::2]), x, cu_seqlens, ctx.max_seqlen)
    return dx, None, None, None, None, None


_slot_x_tokens.register_autograd(_tokens_backward, setup_context=_tokens_setup)


@torch.library.custom_op("slotvlm::slot_attn_fold_dx", mutates_args=())
@entry_guard
def _slot_attn_fold_dx(tok_s: Tensor, tok_q: Tensor, x: Tensor, cu_seqlens: Optional[Tensor], max_seqlen: int) -> Tensor:
    return _sd.fold_dx(tok_s, tok_q, x, cu_seqlens, max_seqlen)


@_slot_attn_fold_dx.register_fake
def _(tok_s, tok_q, x, cu_seqlens, max_seqlen):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("slotvlm::slot_attn_fold_fwd", mutates_args=())
@entry_guard
def _slot_attn_fold_fwd(
    qc: Tensor,
    x: Tensor,
    tok_s: Optional[Tensor],
    tok_q: Optional[Tensor],
    mask: Optional[Tensor],
    cu_seqlens: Optional[Tensor],
    max_seqlen: int,
    scale: float,
    eps: float,
    return_attn: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    # qc [P, K, D + 1] (q' and the logit bias c), x [P, N, D] / [T, D]: one head, keys = values = x
    out, den, attn = _sd.fold_fwd(qc, x, _u8(mask), cu_seqlens, max_seqlen, scale=scale, eps=eps, return_attn=return_attn)
    return out, den, (attn if attn is not None else x.new_empty(0))


@_slot_attn_fold_fwd.register_fake
def _(qc, x, tok_s, tok_q, mask, cu_seqlens, max_seqlen, scale, eps, return_attn):
    P, K, _ = qc.shape
    out = x.new_empty(qc.shape)
    den = x.new_empty((P, K), dtype=torch.float32)
    return out, den, _fake_attn(x, x, cu_seqlens, P, 1, K, return_attn)


@torch.library.custom_op("slotvlm::slot_attn_fold_bwd", mutates_args=())
@entry_guard
def _slot_attn_fold_bwd(
    qc: Tensor,
    x: Tensor,
    mask: Optional[Tensor],
    cu_seqlens: Optional[Tensor],
    max_seqlen: int,
    den: Tensor,
    dout: Tensor,
    dattn: Optional[Tensor],
    scale: float,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    return _sd.fold_bwd(qc, x, _u8(mask), cu_seqlens, max_seqlen, den, dout, dattn, scale=scale, eps=eps)


@_slot_attn_fold_bwd.register_fake
def _(qc, x, mask, cu_seqlens, max_seqlen, den, dout, dattn, scale, eps):
    P, K, _ = qc.shape
    shape_s, shape_q = _sd.token_shapes(x, cu_seqlens, P, K)
    return qc.new_empty(qc.shape), x.new_empty(shape_s), x.new_empty(shape_q)


def _fold_setup(ctx, inputs, output):
    qc, x, tok_s, _, mask, cu_seqlens, max_seqlen, scale, eps, return_attn = inputs
    ctx.save_for_backward(qc, x, mask, cu_seqlens, output[1])
    ctx.has_tokens = tok_s is not None
    ctx.set_materialize_grads(False)  # den's and unused attn's gradients: no zero tensors
    ctx.max_seqlen, ctx.scale, ctx.eps, ctx.return_attn = max_seqlen, scale, eps, return_attn


def _fold_backward(ctx, dout, dden, dattn):
    qc, x, mask, cu_seqlens, den = ctx.saved_tensors
    if dout is None:  # only den / attn reached the loss
        dout = torch.zeros_like(qc)
    dqc, tok_s, tok_q = _slot_attn_fold_bwd(
        qc, x, mask, cu_seqlens, ctx.max_seqlen, den, dout, dattn if ctx.return_attn else None, ctx.scale, ctx.eps
    )
    if not ctx.has_tokens:
        tok_s = tok_q = None
    return dqc, None, tok_s, tok_q, None, None, None, None, None, None


_slot_attn_fold_fwd.register_autograd(_fold_backward, setup_context=_fold_setup)


def x_grad_tokens(x: Tensor, cu_seqlens: Optional[Tensor], max_seqlen: int, num_problems: int, num_slots: int, n: int):
    """``n`` token pairs for :func:`_projected_step` (one per differentiated iteration over x)."""
    t = _slot_x_tokens(x, cu_seqlens, int(max_seqlen), int(num_problems), int(num_slots), int(n))
    return [(t[2 * i], t[2 * i + 1]) for i in range(n)]


# ------------------------------------------------------------------------ LayerNorm custom ops
# The folded path's input LayerNorm: reads x in its dtype, writes y in the compute dtype (under
# autocast the conversion is the kernel's store) and fp32 row statistics.
@torch.library.custom_op("slotvlm::layer_norm_fwd", mutates_args=())
@entry_guard
def _layer_norm_fwd(
    x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, out_dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    return _ln.layer_norm_fwd(x, weight, bias, eps, out_dtype)


@_layer_norm_fwd.register_fake
def _(x, weight, bias, eps, out_dtype):
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    return x.new_empty(x.shape, dtype=out_dtype), x.new_empty((2, rows), dtype=torch.float32)


@torch.library.custom_op("slotvlm::layer_norm_bwd", mutates_args=())
@entry_guard
def _layer_norm_bwd(
    x: Tensor, weight: Optional[Tensor], dy: Tensor, stats: Tensor, need_dwb: bool, param_dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """``(dx, dwb [2, D] — dweight, dbias — in param_dtype, or an empty tensor)``: one output for
    both parameter gradients (outputs of a custom op may not alias one another)."""
    dx, dwb = _ln.layer_norm_bwd(x, weight, dy, stats, need_dwb, param_dtype)
    return dx, (dwb if dwb is not None else stats.new_empty(0))


@_layer_norm_bwd.register_fake
def _(x, weight, dy, stats, need_dwb, param_dtype):
    dwb = x.new_empty((2, x.shape[-1]), dtype=param_dtype) if need_dwb else stats.new_empty(0)
    return torch.empty_like(x, memory_format=torch.contiguous_format), dwb


def _layer_norm_setup(ctx, inputs, output):
    x, weight, bias, eps, out_dtype = inputs
    _, stats = output
    ctx.save_for_backward(x, weight, stats)
    ctx.set_materialize_grads(False)  # the statistics get no gradient: no zero tensor
    ctx.param_dtype = (weight if weight is not None else bias if bias is not None else x).dtype


def _layer_norm_backward(ctx, dy, dstats):
    if dy is None:  # only the statistics reached the loss
        return None, None, None, None, None
    x, weight, stats = ctx.saved_tensors
    need_dw, need_db = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
    dx, dwb = _layer_norm_bwd(x, weight, dy, stats, need_dw or need_db, ctx.param_dtype)
    dw = dwb[0] if need_dw else None
    db = dwb[1] if need_db else None
    return (dx if ctx.needs_input_grad[0] else None), dw, db, None, None


_layer_norm_fwd.register_autograd(_layer_norm_backward, setup_context=_layer_norm_setup)


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


class _GruHidden(torch.autograd.Function):
    """``gru_gates(gi, h W_hhᵀ + b_hh, h)`` with the hidden GEMM's weight gradient deferred (as
    :func:`slotvlm.ops.deferred.deferred_linear`). One node for both uses of h, so its backward
    adds the GEMM's input gradient to the gates' in the GEMM itself (``addmm``): no separate add."""

    @staticmethod
    def forward(ctx, gi, h, w_hh, b_hh, tok_a, tok_d):
        from .deferred import _linear  # noqa: PLC0415

        hc = h if h.dtype == gi.dtype else h.to(gi.dtype)  # the compute dtype (autocast's, or h's)
        gh = _linear(hc, w_hh, b_hh, False)
        out = _gru_gates(gi, gh, hc)
        ctx.save_for_backward(gi, gh, hc, w_hh)
        ctx.set_materialize_grads(False)
        return out

    @staticmethod
    def backward(ctx, dout):
        if dout is None:
            return None, None, None, None, None, None
        gi, gh, hc, w_hh = ctx.saved_tensors
        dgi, dgh, dh = _gru_gates_bwd(gi, gh, hc, dout)
        dh = torch.addmm(dh, dgh, w_hh.to(dgh.dtype)) if ctx.needs_input_grad[1] else None
        return dgi, dh, None, None, hc, dgh


def gru_hidden(gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], tokens: tuple[Tensor, Tensor]) -> Tensor:
    """The GRU's new hidden state ``[rows, D]`` from its input gates ``gi [rows, 3D]`` and hidden
    state ``h [rows, D]``; the weight/bias gradient of ``W_hh``/``b_hh`` goes to ``tokens`` (a pair
    from :func:`slotvlm.ops.deferred.weight_grad_tokens`)."""
    return _GruHidden.apply(gi, h, w_hh, b_hh, tokens[0], tokens[1])


# ---------------------------------------------------------------------------- public functions
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
    check_step_args(q, k, v, varlen=False, scale=scale, eps=eps)
    if mask is not None:
        check_tensor("mask", mask, shape=(q.shape[0], k.shape[1]), dtype=torch.bool, device=q.device)
    out, _, attn = _slot_attn_fwd(q, k, v, mask, None, None, int(k.shape[1]), float(scale), float(eps), bool(return_attn))
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
        cu_seqlens: int32 or int64 ``[P + 1]``, non-decreasing, starting at 0, ending at T (checked:
            one host sync, skipped under torch.compile / CUDA-graph capture, where max_seqlen is required).
        max_seqlen: the longest sequence, or more (computed from cu_seqlens if None).
        scale, eps, return_attn: as in :func:`slot_attention_step`.

    Returns:
        ``(updates [P, K, H, Dh], attn [H, K, T] or None)`` (attention laid out like the tokens).
    """
    check_step_args(q, k, v, varlen=True, scale=scale, eps=eps)
    cu_seqlens, _, max_seqlen = check_cu_seqlens(cu_seqlens, k.shape[0], num_seqs=q.shape[0], device=q.device,
                                                 max_seqlen=max_seqlen)
    return _step_varlen(q, k, v, cu_seqlens, max_seqlen, scale=scale, eps=eps, return_attn=return_attn)


def _step_varlen(q, k, v, cu_seqlens, max_seqlen: int, *, scale: float, eps: float, return_attn: bool):
    """:func:`slot_attention_step_varlen` without the checks (``SlotAttention.forward_varlen`` checks
    once per call, not once per iteration: reading cu_seqlens is a host sync)."""
    out, _, attn = _slot_attn_fwd(
        q, k, v, None, cu_seqlens, None, int(max_seqlen), float(scale), float(eps), bool(return_attn)
    )
    return out, (attn if return_attn else None)


def slot_attention_step_projected(
    q: Tensor,
    x: Tensor,
    w_k: Tensor,
    b_k: Optional[Tensor],
    w_v: Tensor,
    b_v: Optional[Tensor],
    mask: Optional[Tensor] = None,
    cu_seqlens: Optional[Tensor] = None,
    max_seqlen: Optional[int] = None,
    *,
    scale: float,
    eps: float = 1e-8,
    return_attn: bool = False,
) -> tuple[Tensor, Optional[Tensor]]:
    """One-head slot-attention step with the key/value projections folded into the slots.

    Equal to ``slot_attention_step(q, x W_kᵀ + b_k, x W_vᵀ + b_v)`` without ever forming k or v:
    ``q·k_n = (q W_k)·x_n + q·b_k`` (a per-slot logit bias) and, since the normalised weights of a
    non-empty problem sum to 1, ``Σ_n W_kn v_n = (Σ_n W_kn x_n) W_vᵀ + b_v``. The kernel streams
    the normalised inputs x once per iteration instead of k and v, and the ``4·T·D²`` FLOPs of the
    two projections become ``4·P·K·D²``.

    Args:
        q: ``[P, K, D]`` slot queries (``D`` = the projections' output width).
        x: ``[P, N, D_in]`` inputs (padded, optional ``mask [P, N]``) or ``[T, D_in]`` packed with
            ``cu_seqlens`` int32 ``[P + 1]`` (and optional ``max_seqlen``).
        w_k, w_v: ``[D, D_in]`` (``nn.Linear`` weights); b_k, b_v: ``[D]`` or None.
        scale, eps, return_attn: as in :func:`slot_attention_step`.

    Returns:
        ``(updates [P, K, D], attn)`` with attn ``[P, 1, K, N]`` (padded) or ``[1, K, T]``
        (packed), or None.
    """
    check_tensor("q", q, ndim=3, floating=True)
    P, K, D = q.shape
    if P == 0 or K == 0:
        raise ValueError(f"q must have at least one problem and one slot ([P, K, D] with P, K >= 1), got {describe(q)}")
    check_tensor("w_k", w_k, shape=(D, None), floating=True, device=q.device)
    d_in = w_k.shape[1]
    check_tensor("w_v", w_v, shape=(D, d_in), floating=True, device=q.device)
    for name, b in (("b_k", b_k), ("b_v", b_v)):
        if b is not None:
            check_tensor(name, b, shape=(D,), floating=True, device=q.device)
    check_number("scale", scale)
    check_number("eps", eps, minimum=0.0)
    if cu_seqlens is None:
        check_tensor("x", x, shape=(P, None, d_in), floating=True, device=q.device)
        if mask is not None:
            check_tensor("mask", mask, shape=(P, x.shape[1]), dtype=torch.bool, device=q.device)
        max_seqlen = x.shape[1]
    else:
        check_tensor("x", x, shape=(None, d_in), floating=True, device=q.device)
        if mask is not None:
            raise ValueError("mask must be None with cu_seqlens (packed sequences have no padding)")
        cu_seqlens, _, max_seqlen = check_cu_seqlens(cu_seqlens, x.shape[0], num_seqs=P, device=q.device,
                                                     max_seqlen=max_seqlen)
    return _projected_step(
        q, x, w_k, b_k, w_v, b_v, mask, cu_seqlens, int(max_seqlen), float(scale), float(eps), bool(return_attn)
    )


def _augment(w: Tensor, b: Optional[Tensor]) -> Tensor:
    """``[w | b]`` (a zero column without a bias): ``[D, D_in]`` → ``[D, D_in + 1]``."""
    col = b.unsqueeze(1) if b is not None else w.new_zeros(w.shape[0], 1)
    return torch.cat([w, col.to(w.dtype)], dim=1)


def fold_step(qc, x, mask, cu_seqlens, max_seqlen: int, scale: float, eps: float, return_attn: bool, tokens=None):
    """The folded one-head step on prepared inputs (no argument checks; the module's per-iteration
    call). ``qc [P, K, D + 1]``: slot queries projected by ``[W_k | b_k]`` (q' and the logit bias);
    x in qc's dtype. Returns ``(out [P, K, D + 1], attn)``: u' = Σ_n W x_n and the weight sum, so
    ``out @ [W_v | b_v]ᵀ`` is the update. ``tokens``: a pair from :func:`x_grad_tokens` (the input
    gradient is deferred to them); None: one pair is made here when a gradient can be needed."""
    if tokens is None and torch.is_grad_enabled() and x.requires_grad:
        tokens = x_grad_tokens(x, cu_seqlens, max_seqlen, qc.shape[0], qc.shape[1], 1)[0]
    tok_s, tok_q = tokens if tokens is not None else (None, None)
    out, _, attn = _slot_attn_fold_fwd(qc, x, tok_s, tok_q, mask, cu_seqlens, max_seqlen, scale, eps, return_attn)
    return out, (attn if return_attn else None)


def _projected_step(q, x, w_k, b_k, w_v, b_v, mask, cu_seqlens, max_seqlen: int, scale: float, eps: float, return_attn: bool):
    """:func:`slot_attention_step_projected` without the argument checks."""
    qc = torch.matmul(q, _augment(w_k, b_k))  # [P, K, D_in + 1]: q W_k and q·b_k
    if x.dtype != qc.dtype:
        x = x.to(qc.dtype)
    out, attn = fold_step(qc, x, mask, cu_seqlens, max_seqlen, scale, eps, return_attn)
    # sum_n W[k, n] (column D_in of out) is 1 for a problem with tokens, 0 for an empty one
    updates = torch.nn.functional.linear(out, _augment(w_v, b_v).to(out.dtype))
    return updates, attn


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
    check_gru_args(x, h, cell.weight_ih, cell.weight_hh)
    return _gru_cell(x, h, cell)


def _gru_cell(x: Tensor, h: Tensor, cell: torch.nn.GRUCell) -> Tensor:
    """:func:`gru_cell` without the argument checks (the module's per-iteration call)."""
    gi = torch.nn.functional.linear(x, cell.weight_ih, cell.bias_ih)
    gh = torch.nn.functional.linear(h, cell.weight_hh, cell.bias_hh)
    if h.dtype != gi.dtype:  # under autocast the GEMMs come back in bf16/fp16, like ATen's gru_cell
        h = h.to(gi.dtype)
    return _gru_gates(gi, gh, h)


def layer_norm(
    x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float = 1e-5, *, out_dtype: Optional[torch.dtype] = None
) -> Tensor:
    """``torch.nn.functional.layer_norm(x, (D,), weight, bias, eps)`` written in ``out_dtype``.

    Statistics and the affine transform in fp32; x is read in its own dtype and y stored directly in
    ``out_dtype`` (default: x's dtype), so an fp32 x normalised for a bf16 consumer costs one pass
    instead of an fp32 LayerNorm plus a conversion. Differentiable in x, weight and bias (dx in x's
    dtype, dweight/dbias in the parameters' dtype; deterministic).

    Args:
        x: ``[..., D]`` (1 <= D <= 8192), float32/float16/bfloat16.
        weight, bias: ``[D]`` or None (``nn.LayerNorm(elementwise_affine=False)`` / ``bias=False``).
        eps: added to the variance. out_dtype: dtype of the result (float32/float16/bfloat16).

    Returns:
        y ``[..., D]`` in ``out_dtype``.

    Example::

        ln = torch.nn.LayerNorm(1024).cuda()
        x = torch.randn(8, 256, 1024, device="cuda")
        y = layer_norm(x, ln.weight, ln.bias, ln.eps, out_dtype=torch.bfloat16)  # [8, 256, 1024] bf16
    """
    check_tensor("x", x, floating=True)
    if x.ndim < 1:
        raise ValueError(f"x must have at least one dimension (the normalised one), got {describe(x)}")
    D = x.shape[-1]
    _ln.check_width(D)
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            check_tensor(name, p, shape=(D,), floating=True, device=x.device)
    if weight is not None and bias is not None and weight.dtype != bias.dtype:
        raise ValueError(f"weight and bias must share one dtype, got {weight.dtype} and {bias.dtype}")
    check_number("eps", eps, minimum=0.0)
    out_dtype = x.dtype if out_dtype is None else out_dtype
    if out_dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"out_dtype must be one of float32, float16, bfloat16, got {out_dtype}")
    return _layer_norm(x, weight, bias, eps, out_dtype)


def _layer_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, out_dtype: torch.dtype) -> Tensor:
    """:func:`layer_norm` without the argument checks (the module's once-per-call input LayerNorm)."""
    return _layer_norm_fwd(x, weight, bias, float(eps), out_dtype)[0]
