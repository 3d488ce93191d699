"""Argument checks shared by the public API: each failure raises ``ValueError`` naming the
argument and the value received."""
from __future__ import annotations

import math
from typing import Sequence

import torch


def describe(t: torch.Tensor) -> str:
    return f"tensor of shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def check_tensor(
    name: str,
    t,
    *,
    ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    floating: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Validate ``t`` and return it. ``shape`` entries of None match any size."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got {describe(t)}")
    if shape is not None:
        if t.dim() != len(shape) or any(s is not None and s != a for s, a in zip(shape, t.shape)):
            want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            raise ValueError(f"{name} must have shape {want}, got {describe(t)}")
    if floating and not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {describe(t)}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name} must have dtype {dtype}, got {describe(t)}")
    if device is not None and t.device != torch.device(device):
        raise ValueError(f"{name} must be on device {device}, got {describe(t)}")
    return t


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _tracing() -> bool:
    """True while torch.compile traces or a CUDA graph is being captured: no host syncs then."""
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def check_cu_seqlens(cu_seqlens, total: int, *, num_seqs: int | None = None, device=None,
                     max_seqlen=None) -> tuple[torch.Tensor, list[int] | None, int]:
    """Validate flash-attn style packed-sequence offsets and return ``(cu_seqlens as int32, the
    sequence lengths (None while tracing), max_seqlen)``.

    ``cu_seqlens`` is a 1-D int32 or int64 tensor ``[P + 1]`` (``P = num_seqs`` when given, else at
    least one sequence) that starts at 0, never decreases and ends at ``total`` (the number of packed
    tokens). ``max_seqlen``, when given, must be an int >= the longest sequence (a smaller one would
    make the kernels skip tokens). Reading the values is one host sync; while torch.compile traces or
    a CUDA graph is captured the values are not read and ``max_seqlen`` is required.
    """
    if not isinstance(cu_seqlens, torch.Tensor):
        raise ValueError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"cu_seqlens must have dtype torch.int32 or torch.int64, got {describe(cu_seqlens)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        raise ValueError(f"cu_seqlens must be 1-D with at least 2 entries, got {describe(cu_seqlens)}")
    if num_seqs is not None and cu_seqlens.shape[0] != num_seqs + 1:
        raise ValueError(f"cu_seqlens must have shape [{num_seqs + 1}] (one more than the {num_seqs} sequences), "
                         f"got {describe(cu_seqlens)}")
    if device is not None and cu_seqlens.device != torch.device(device):
        raise ValueError(f"cu_seqlens must be on device {device}, got {describe(cu_seqlens)}")
    if max_seqlen is not None and (isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int) or max_seqlen < 0):
        raise ValueError(f"max_seqlen must be a non-negative int, got {max_seqlen!r}")
    cu32 = cu_seqlens.to(torch.int32)
    if _tracing():
        if max_seqlen is None:
            raise ValueError("max_seqlen must be given under torch.compile or CUDA-graph capture (computing it "
                             "from cu_seqlens is a host sync), got None")
        return cu32, None, max_seqlen
    host = cu_seqlens.tolist()
    lengths = [b - a for a, b in zip(host, host[1:])]
    if host[0] != 0 or host[-1] != total or min(lengths) < 0:
        shown = host if len(host) <= 20 else host[:10] + ["..."] + host[-5:]
        raise ValueError(f"cu_seqlens must start at 0, be non-decreasing and end at T={total}, got {shown}")
    longest = max(lengths)
    if max_seqlen is None:
        max_seqlen = longest
    elif max_seqlen < longest:
        raise ValueError(f"max_seqlen={max_seqlen} is shorter than the longest sequence in cu_seqlens ({longest})")
    return cu32, lengths, max_seqlen


def check_number(name: str, value, *, minimum: float | None = None) -> float:
    """A finite real number (``>= minimum`` when given), returned as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (minimum is not None and value < minimum):
        bound = f" >= {minimum:g}" if minimum is not None else ""
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return float(value)


def check_step_args(q, k, v, *, varlen: bool, scale, eps, any_value_width: bool = False) -> None:
    """The slot-attention step's contract: q ``[P, K, H, Dh]`` with P, K >= 1; k, v ``[P, N, H, Dh]``
    (``[T, H, Dh]`` packed when ``varlen``; v's last width free with ``any_value_width``), one
    floating dtype, one device; finite scale; eps >= 0."""
    check_tensor("q", q, ndim=4, floating=True)
    P, K, H, Dh = q.shape
    if P == 0 or K == 0:
        raise ValueError(f"q must have at least one problem and one slot ([P, K, H, Dh] with P, K >= 1), got {describe(q)}")
    check_tensor("k", k, shape=(None, H, Dh) if varlen else (P, None, H, Dh), floating=True, device=q.device)
    check_tensor("v", v, shape=tuple(k.shape[:-1]) + ((None,) if any_value_width else (Dh,)), floating=True,
                 device=q.device)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    check_number("scale", scale)
    check_number("eps", eps, minimum=0.0)


def check_gru_args(x, h, weight_ih, weight_hh) -> None:
    """GRU cell shapes: x ``[M, D_in]``, h ``[M, D]``, weight_ih ``[3D, D_in]``, weight_hh ``[3D, D]``."""
    check_tensor("x", x, ndim=2, floating=True)
    check_tensor("h", h, ndim=2, floating=True, device=x.device)
    m, d = h.shape
    if m != x.shape[0]:
        raise ValueError(f"h must have shape [{x.shape[0]}, D] (x's rows), got {describe(h)}")
    check_tensor("weight_ih", weight_ih, shape=(3 * d, x.shape[1]), floating=True, device=x.device)
    check_tensor("weight_hh", weight_hh, shape=(3 * d, d), floating=True, device=x.device)
