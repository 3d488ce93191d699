"""Diagonal selective scan (Mamba-style SSM over time): references, the fused op, the public function.

Recurrence, for each row ``r`` (one sequence, e.g. one slot of one video), channel ``d`` and state
index ``s``::

    h[t, d, s] = exp(delta[t, d] * A[d, s]) * h[t-1, d, s] + delta[t, d] * B[t, s] * u[t, d]
    y[t, d]    = sum_s C[t, s] * h[t, d, s] + D[d] * u[t, d]                (h[-1] = h0)

Shapes: ``u, delta, y [R, T, Dc]``, ``A [Dc, S]`` (diagonal, negative for a stable system),
``B, C [R, T, S]`` (input-dependent), ``D [Dc]`` (skip), states ``h0, h_last [R, Dc, S]``.

Three implementations, all returning ``(y, h_last)``:

- :func:`selective_scan_ref` — the sequential loop over time in fp32 (fp64 for fp64 inputs): the
  specification and the CPU path.
- :func:`selective_scan_parallel` — a PyTorch parallel scan (Hillis–Steele doubling over time on the
  (decay, input) pairs, ``ceil(log2 T)`` vectorised steps); a second, independent baseline.
- the fused Triton kernels (``kernels/selective_scan.py``) behind the custom op
  ``slotvlm::selective_scan_fwd`` (+ ``slotvlm::selective_scan_bwd``), with ``register_fake`` and
  ``register_autograd`` so ``torch.compile`` traces it and ``torch.library.opcheck`` passes.
"""
from __future__ import annotations

import torch

from .._checks import check_tensor, describe
from ..backend import resolve_backend


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_scan_args(u, delta, A, B, C, D, h0):
    check_tensor("u", u, ndim=3, floating=True)
    R, T, Dc = u.shape
    if R == 0 or T == 0 or Dc == 0:
        raise ValueError(f"u must have R, T, Dc >= 1, got {describe(u)}")
    check_tensor("delta", delta, shape=(R, T, Dc), floating=True, device=u.device)
    check_tensor("A", A, ndim=2, floating=True, device=u.device)
    if A.shape[0] != Dc or A.shape[1] == 0:
        raise ValueError(f"A must have shape [{Dc}, S] with S >= 1 (Dc = u.shape[2]), got {describe(A)}")
    S = A.shape[1]
    check_tensor("B", B, shape=(R, T, S), floating=True, device=u.device)
    check_tensor("C", C, shape=(R, T, S), floating=True, device=u.device)
    if D is not None:
        check_tensor("D", D, shape=(Dc,), floating=True, device=u.device)
    if h0 is not None:
        check_tensor("h0", h0, shape=(R, Dc, S), floating=True, device=u.device)
    return R, T, Dc, S


def selective_scan_ref(u, delta, A, B, C, D=None, h0=None):
    """Sequential reference of the selective scan (a loop over time, fp32 state).

    Args:
        u, delta: ``[R, T, Dc]`` inputs and (positive) step sizes.
        A: ``[Dc, S]``. B, C: ``[R, T, S]``. D: ``[Dc]`` or None. h0: ``[R, Dc, S]`` or None (zeros).

    Returns:
        ``(y [R, T, Dc] in u's dtype, h_last [R, Dc, S] fp32 — fp64 for fp64 inputs)``.

    Example::

        y, h = selective_scan_ref(u, delta, -torch.rand(64, 16), B, C)
    """
    R, T, Dc, S = _check_scan_args(u, delta, A, B, C, D, h0)
    acc = _acc_dtype(u.dtype)
    u32, dt32, A32, B32, C32 = (x.to(acc) for x in (u, delta, A, B, C))
    h = torch.zeros(R, Dc, S, device=u.device, dtype=acc) if h0 is None else h0.to(acc)
    ys = []
    # unbind, not x[:, t]: the backward of T slices would write T full-size [R, T, ...] gradients
    # (O(T^2) time); unbind's backward stacks the T pieces once
    for dt_t, u_t, B_t, C_t in zip(dt32.unbind(1), u32.unbind(1), B32.unbind(1), C32.unbind(1)):
        decay = torch.exp(dt_t[:, :, None] * A32)
        h = decay * h + (dt_t * u_t)[:, :, None] * B_t[:, None, :]
        ys.append(torch.einsum("rds,rs->rd", h, C_t))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + u32 * D.to(acc)
    return y.to(u.dtype), h


def selective_scan_parallel(u, delta, A, B, C, D=None, h0=None, *, acc_dtype: torch.dtype | None = None):
    """PyTorch parallel scan of the same recurrence (same arguments and returns as
    :func:`selective_scan_ref`; ``acc_dtype`` overrides the compute dtype, fp32 by default — e.g.
    bf16 to measure PyTorch's own low-precision error).

    The pairs ``(a_t, x_t) = (exp(delta_t A), delta_t B_t u_t)`` compose associatively
    (``(a1, x1)∘(a2, x2) = (a1 a2, a2 x1 + x2)``); ``ceil(log2 T)`` Hillis–Steele doubling steps over
    the whole ``[R, T, Dc, S]`` tensor solve the recurrence. Work ``O(T log T)``, memory
    ``O(R T Dc S)``: a baseline for the benchmark, differentiable by autograd.
    """
    R, T, Dc, S = _check_scan_args(u, delta, A, B, C, D, h0)
    acc = _acc_dtype(u.dtype) if acc_dtype is None else acc_dtype
    u32, dt32, A32, B32, C32 = (x.to(acc) for x in (u, delta, A, B, C))
    a = torch.exp(dt32[..., None] * A32)  # [R, T, Dc, S]
    x = (dt32 * u32)[..., None] * B32[:, :, None, :]
    if h0 is not None:  # fold the initial state into the first input
        x = torch.cat([x[:, :1] + a[:, :1] * h0.to(acc)[:, None], x[:, 1:]], dim=1)
    offset = 1
    while offset < T:
        x = torch.cat([x[:, :offset], x[:, offset:] + a[:, offset:] * x[:, :-offset]], dim=1)
        a = torch.cat([a[:, :offset], a[:, offset:] * a[:, :-offset]], dim=1)
        offset *= 2
    y = torch.einsum("rtds,rts->rtd", x, C32)
    if D is not None:
        y = y + u32 * D.to(acc)
    return y.to(u.dtype), x[:, -1]


# ------------------------------------------------------------------------ the fused custom op
def _kernels():
    try:
        from slotvlm.kernels import selective_scan as k  # noqa: PLC0415  (imports triton lazily)
    except ImportError as exc:
        raise ValueError(f"the Triton selective scan is not available in this build: {exc}") from exc
    return k


@torch.library.custom_op("slotvlm::selective_scan_fwd", mutates_args=())
def _scan_fwd_op(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    h0: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(y, h_last, ckpt)``; ``ckpt`` (the state before each time chunk) is for backward."""
    _check_scan_args(u, delta, A, B, C, D, h0)  # direct torch.ops calls get the same ValueErrors
    return _kernels().selective_scan_fwd(u, delta, A, B, C, D, h0)


@_scan_fwd_op.register_fake
def _scan_fwd_fake(u, delta, A, B, C, D, h0):
    R, T, Dc = u.shape
    S = A.shape[1]
    nchunk = _kernels().num_chunks(T, Dc, u.device)
    f32 = dict(device=u.device, dtype=torch.float32)
    return torch.empty_like(u), u.new_empty((R, Dc, S), **f32), u.new_empty((R, nchunk, Dc, S), **f32)


@torch.library.custom_op("slotvlm::selective_scan_bwd", mutates_args=())
def _scan_bwd_op(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    ckpt: torch.Tensor,
    dy: torch.Tensor,
    dh_last: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(du, ddelta, dA, dB, dC, dD, dh0)``."""
    return _kernels().selective_scan_bwd(u, delta, A, B, C, D, ckpt, dy, dh_last)


@_scan_bwd_op.register_fake
def _scan_bwd_fake(u, delta, A, B, C, D, ckpt, dy, dh_last):
    return (
        torch.empty_like(u),
        torch.empty_like(delta),
        torch.empty_like(A),
        torch.empty_like(B),
        torch.empty_like(C),
        torch.empty_like(D),
        dh_last.new_empty(dh_last.shape, dtype=torch.float32),
    )


def _scan_setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, h0 = inputs
    _, _, ckpt = output
    ctx.h0_dtype = h0.dtype
    ctx.mark_non_differentiable(ckpt)
    ctx.save_for_backward(u, delta, A, B, C, D, ckpt)


def _scan_backward(ctx, dy, dh_last, _dckpt):
    u, delta, A, B, C, D, ckpt = ctx.saved_tensors
    R, T, Dc = u.shape
    if dy is None:
        dy = torch.zeros_like(u)
    if dh_last is None:
        dh_last = u.new_zeros((R, Dc, A.shape[1]), dtype=torch.float32)
    du, ddelta, dA, dB, dC, dD, dh0 = _scan_bwd_op(u, delta, A, B, C, D, ckpt, dy, dh_last)
    return du, ddelta, dA, dB, dC, dD, dh0.to(ctx.h0_dtype)


_scan_fwd_op.register_autograd(_scan_backward, setup_context=_scan_setup_context)


def selective_scan(u, delta, A, B, C, D=None, h0=None, *, backend: str | None = None):
    """Diagonal selective scan: ``(y [R, T, Dc], h_last [R, Dc, S])``.

    Args:
        u, delta: ``[R, T, Dc]``; delta is the (positive, e.g. softplus'd) step size.
        A: ``[Dc, S]`` diagonal state matrix (negative for decay). B, C: ``[R, T, S]``.
        D: ``[Dc]`` skip connection or None. h0: ``[R, Dc, S]`` initial state or None (zeros);
            pass the previous call's ``h_last`` to continue a sequence (streaming).
        backend: ``"torch"`` (the sequential reference), ``"triton"`` (the fused kernels; on CPU
            under ``TRITON_INTERPRET=1``), ``"auto"`` (Triton on CUDA), None = ``$SLOTVLM_BACKEND``.

    Returns:
        ``y`` in u's dtype and ``h_last`` in fp32 (the state after the last step). Differentiable
        in every tensor argument on both backends.

    Example::

        R, T, Dc, S = 16, 100, 64, 8
        y, h = selective_scan(torch.randn(R, T, Dc), F.softplus(torch.randn(R, T, Dc)),
                              -torch.rand(Dc, S), torch.randn(R, T, S), torch.randn(R, T, S))
    """
    R, T, Dc, S = _check_scan_args(u, delta, A, B, C, D, h0)
    if resolve_backend(backend, u.device) == "torch":
        return selective_scan_ref(u, delta, A, B, C, D, h0)
    if D is None:
        D = u.new_zeros(Dc, dtype=torch.float32)
    if h0 is None:
        h0 = u.new_zeros((R, Dc, S), dtype=torch.float32)
    y, h_last, _ = _scan_fwd_op(u, delta, A, B, C, D, h0)
    return y, h_last
