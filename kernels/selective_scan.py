"""Triton kernels of the diagonal selective scan (Mamba-style), forward and backward.

Recurrence, per row ``b`` (a batch·slot sequence), channel ``d`` and state ``s``::

    h[t]  = exp(delta[t, d] * A[d, s]) * h[t-1] + delta[t, d] * B[t, s] * u[t, d]     (h[-1] = h0)
    y[t,d] = sum_s C[t, s] * h[t, d, s] + D[d] * u[t, d]

Layouts (all contiguous): ``u, delta, y [R, T, Dc]``; ``A [Dc, S]``; ``B, C [R, T, S]``;
``D [Dc]``; states ``[R, Dc, S]`` (fp32).

Parallel structure: one program per (row, block of ``BLOCK_D`` channels). Time is cut into chunks
of ``BLOCK_T`` steps, solved in parallel inside a chunk and chained across chunks by a carried
state (one ``BLOCK_D`` vector per state index). Inside a chunk the recurrence is written in its
matrix form (as Mamba-2's chunked "SSD" does): with ``aS = A * cumsum(delta)``,

    h[t] = sum_{i<=t} exp(aS[t] - aS[i]) * x[i] + exp(aS[t]) * h_in,     x = delta * B * u

a ``[BLOCK_T, BLOCK_T, BLOCK_D]`` decay tile whose exponents are all <= 0 for a stable system
(A <= 0, delta >= 0) — no division by a decay product, nothing that can overflow. The state
dimension ``S`` is looped over, so the registers hold one decay tile whatever ``S`` is. State and
all accumulation are fp32 whatever the input dtype.

The forward writes the state at the start of every chunk (``ckpt [R, n_chunks, Dc, S]``). The
backward walks the chunks from the end, recomputes the chunk's states from its checkpoint, and
gets the adjoint ``g[t] = C[t] dy[t] + exp(delta[t+1] A) g[t+1]`` from the transposed decay tile
plus the carry ``exp(delta A) g`` handed back from the later chunk (after the first chunk that
carry is ``d loss / d h0``). ``exp(delta[t] A) h[t-1] = h[t] - x[t]`` gives the delta and A
gradients without any division either.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _decay_matrix(b_aS, causal):
    """``L[t, i, d] = exp(aS[t, d] - aS[i, d])`` for ``i <= t``, else 0: the decay from step i to
    step t inside a chunk (``aS = A * cumsum(delta)``). The exponent is <= 0 for a stable system
    (A <= 0, delta >= 0), and the masked entries are exp(-inf) = 0, so nothing can overflow."""
    b_diff = b_aS[:, None, :] - b_aS[None, :, :]
    return tl.exp(tl.where(causal[:, :, None], b_diff, float("-inf")))


@triton.jit
def _chunk_states(A_ptr, B_ptr, C_ptr, s, i_r, t, m_t, o_d, m_d, T, NSTATE, b_S, b_dtu, b_h0, causal):
    """State index ``s`` of one chunk: loads ``A[:, s]``, ``B[t, s]``, ``C[t, s]`` and returns them
    with the decay tile ``L``, the inputs ``x = delta B u`` and the states ``h [BLOCK_T, BLOCK_D]``
    started from ``b_h0``."""
    b_a = tl.load(A_ptr + o_d * NSTATE + s, mask=m_d, other=0.0).to(tl.float32)
    b_B = tl.load(B_ptr + (i_r * T + t) * NSTATE + s, mask=m_t, other=0.0).to(tl.float32)
    b_C = tl.load(C_ptr + (i_r * T + t) * NSTATE + s, mask=m_t, other=0.0).to(tl.float32)
    b_aS = b_S * b_a[None, :]
    b_L = _decay_matrix(b_aS, causal)
    b_x = b_dtu * b_B[:, None]
    b_h = tl.sum(b_L * b_x[None, :, :], axis=1) + tl.exp(b_aS) * b_h0[None, :]
    return b_a, b_B, b_C, b_L, b_x, b_h


@triton.jit(do_not_specialize=["T", "NCHUNK"])
def _selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr,
    state_ptr,  # in: h0, out: h at the last step   [R, Dc, S] fp32
    y_ptr,  # [R, T, Dc]
    ckpt_ptr,  # [R, NCHUNK, Dc, S] fp32: state before each chunk
    T, DIM, NSTATE, NCHUNK,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    i_r = tl.program_id(0).to(tl.int64)
    i_d = tl.program_id(1)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m_d = o_d < DIM
    o_t = tl.arange(0, BLOCK_T)
    is_last = (o_t == BLOCK_T - 1)[:, None]
    causal = o_t[:, None] >= o_t[None, :]
    b_D = tl.load(D_ptr + o_d, mask=m_d, other=0.0).to(tl.float32)
    for i_c in range(NCHUNK):
        t = i_c * BLOCK_T + o_t
        m_t = t < T
        m = m_t[:, None] & m_d[None, :]
        o_x = i_r * T * DIM + t[:, None] * DIM + o_d[None, :]
        # padded steps get delta = u = 0: decay 1, input 0, so the state passes through them
        b_u = tl.load(u_ptr + o_x, mask=m, other=0.0).to(tl.float32)
        b_dt = tl.load(delta_ptr + o_x, mask=m, other=0.0).to(tl.float32)
        b_dtu = b_dt * b_u
        b_S = tl.cumsum(b_dt, axis=0)  # padded steps add 0
        b_y = b_u * b_D[None, :]
        for s in range(NSTATE):
            p_h = state_ptr + (i_r * DIM + o_d) * NSTATE + s
            b_h0 = tl.load(p_h, mask=m_d, other=0.0)
            tl.store(ckpt_ptr + ((i_r * NCHUNK + i_c) * DIM + o_d) * NSTATE + s, b_h0, mask=m_d)
            _, _, b_C, _, _, b_h = _chunk_states(
                A_ptr, B_ptr, C_ptr, s, i_r, t, m_t, o_d, m_d, T, NSTATE, b_S, b_dtu, b_h0, causal
            )
            b_y += b_h * b_C[:, None]
            tl.store(p_h, tl.sum(tl.where(is_last, b_h, 0.0), axis=0), mask=m_d)
        tl.store(y_ptr + o_x, b_y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=["T", "NCHUNK"])
def _selective_scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, ckpt_ptr, dy_ptr,
    dstate_ptr,  # in: d loss / d h_last, out: d loss / d h0   [R, Dc, S] fp32
    du_ptr, ddelta_ptr,  # [R, T, Dc]
    dA_ptr,  # [R, Dc, S] fp32, zero-initialised (summed over rows by the launcher)
    dB_ptr, dC_ptr,  # [R, N_DBLOCK, T, S] fp32 (summed over channel blocks by the launcher)
    dD_ptr,  # [R, Dc] fp32
    T, DIM, NSTATE, NCHUNK, N_DBLOCK,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    i_r = tl.program_id(0).to(tl.int64)
    i_d = tl.program_id(1)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m_d = o_d < DIM
    o_t = tl.arange(0, BLOCK_T)
    is_first = (o_t == 0)[:, None]
    causal = o_t[:, None] >= o_t[None, :]
    b_D = tl.load(D_ptr + o_d, mask=m_d, other=0.0).to(tl.float32)
    b_dD = tl.zeros([BLOCK_D], dtype=tl.float32)
    for i_rev in range(NCHUNK):
        i_c = NCHUNK - 1 - i_rev
        t = i_c * BLOCK_T + o_t
        m_t = t < T
        m = m_t[:, None] & m_d[None, :]
        o_x = i_r * T * DIM + t[:, None] * DIM + o_d[None, :]
        b_u = tl.load(u_ptr + o_x, mask=m, other=0.0).to(tl.float32)
        b_dt = tl.load(delta_ptr + o_x, mask=m, other=0.0).to(tl.float32)
        b_dy = tl.load(dy_ptr + o_x, mask=m, other=0.0).to(tl.float32)
        b_S = tl.cumsum(b_dt, axis=0)
        b_S_end = tl.sum(b_dt, axis=0)[None, :]
        b_dtu = b_dt * b_u
        b_du = b_dy * b_D[None, :]
        b_ddt = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
        b_dD += tl.sum(b_dy * b_u, axis=0)
        for s in range(NSTATE):
            # states of this chunk, recomputed from the checkpoint
            b_h0 = tl.load(ckpt_ptr + ((i_r * NCHUNK + i_c) * DIM + o_d) * NSTATE + s, mask=m_d, other=0.0)
            b_a, b_B, b_C, b_L, b_x, b_h = _chunk_states(
                A_ptr, B_ptr, C_ptr, s, i_r, t, m_t, o_d, m_d, T, NSTATE, b_S, b_dtu, b_h0, causal
            )
            # adjoint g[t] = C[t] dy[t] + decay[t+1] g[t+1]: the transposed decay matrix, plus the
            # carry from the later chunks decayed from the chunk's end back to t
            p_g = dstate_ptr + (i_r * DIM + o_d) * NSTATE + s
            b_carry = tl.load(p_g, mask=m_d, other=0.0)
            b_c = b_dy * b_C[:, None]
            b_g = tl.sum(b_L * b_c[:, None, :], axis=0) + tl.exp((b_S_end - b_S) * b_a[None, :]) * b_carry[None, :]
            b_decay = tl.exp(b_dt * b_a[None, :])
            tl.store(p_g, tl.sum(tl.where(is_first, b_decay * b_g, 0.0), axis=0), mask=m_d)
            # decay[t] * h[t-1] = h[t] - x[t]: no division by a possibly tiny decay
            b_w = b_g * (b_h - b_x)
            b_ddt += b_a[None, :] * b_w + b_g * b_u * b_B[:, None]
            b_du += b_g * b_dt * b_B[:, None]
            p_dA = dA_ptr + (i_r * DIM + o_d) * NSTATE + s
            tl.store(p_dA, tl.load(p_dA, mask=m_d, other=0.0) + tl.sum(b_w * b_dt, axis=0), mask=m_d)
            o_bc = ((i_r * N_DBLOCK + i_d) * T + t) * NSTATE + s
            tl.store(dB_ptr + o_bc, tl.sum(b_g * b_dtu, axis=1), mask=m_t)
            tl.store(dC_ptr + o_bc, tl.sum(b_dy * b_h, axis=1), mask=m_t)
        tl.store(du_ptr + o_x, b_du.to(du_ptr.dtype.element_ty), mask=m)
        tl.store(ddelta_ptr + o_x, b_ddt.to(ddelta_ptr.dtype.element_ty), mask=m)
    tl.store(dD_ptr + i_r * DIM + o_d, b_dD, mask=m_d)


# ---------------------------------------------------------------------------------- launchers
def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def scan_blocks(seqlen: int, channels: int, device: torch.device) -> tuple[int, int]:
    """``(BLOCK_T, BLOCK_D)`` for a problem; the forward and backward must agree (checkpoints)."""
    on_gpu = torch.device(device).type == "cuda" and not _interpreting()
    # GPU: the [BLOCK_T, BLOCK_T, BLOCK_D] decay tile must fit in registers. Interpreter: the cost
    # is per operation, not per element, so fewer and larger tiles run faster.
    block_t = min(16 if on_gpu else 32, triton.next_power_of_2(max(seqlen, 1)))
    block_d = min(32 if on_gpu else 64, triton.next_power_of_2(max(channels, 1)))
    return block_t, block_d


def num_chunks(seqlen: int, channels: int, device: torch.device) -> int:
    """Number of time chunks (= checkpoints per row) the kernels use for this problem."""
    return triton.cdiv(seqlen, scan_blocks(seqlen, channels, device)[0])


def selective_scan_fwd(u, delta, A, B, C, D, h0):
    """Launch the forward kernel.

    ``u, delta [R, T, Dc]``, ``A [Dc, S]``, ``B, C [R, T, S]``, ``D [Dc]``, ``h0 [R, Dc, S]`` →
    ``(y [R, T, Dc] in u's dtype, h_last [R, Dc, S] fp32, ckpt [R, n_chunks, Dc, S] fp32)``.
    """
    u, delta, A, B, C, D = (x.contiguous() for x in (u, delta, A, B, C, D))
    R, T, Dc = u.shape
    S = A.shape[1]
    block_t, block_d = scan_blocks(T, Dc, u.device)
    nchunk = triton.cdiv(T, block_t)
    state = h0.to(torch.float32).contiguous().clone()
    y = torch.empty_like(u)
    ckpt = torch.empty((R, nchunk, Dc, S), device=u.device, dtype=torch.float32)
    grid = (R, triton.cdiv(Dc, block_d))
    _selective_scan_fwd_kernel[grid](
        u, delta, A, B, C, D, state, y, ckpt, T, Dc, S, nchunk,
        BLOCK_T=block_t, BLOCK_D=block_d, num_warps=8,
    )
    return y, state, ckpt


def selective_scan_bwd(u, delta, A, B, C, D, ckpt, dy, dh_last):
    """Launch the backward kernel; returns ``(du, ddelta, dA, dB, dC, dD, dh0)`` shaped and typed
    like ``(u, delta, A, B, C, D, h0)`` (``dh0`` fp32)."""
    u, delta, A, B, C, D, dy = (x.contiguous() for x in (u, delta, A, B, C, D, dy))
    R, T, Dc = u.shape
    S = A.shape[1]
    block_t, block_d = scan_blocks(T, Dc, u.device)
    nchunk = triton.cdiv(T, block_t)
    if ckpt.shape != (R, nchunk, Dc, S):
        raise ValueError(f"ckpt must have shape {(R, nchunk, Dc, S)}, got {tuple(ckpt.shape)}")
    n_dblock = triton.cdiv(Dc, block_d)
    f32 = dict(device=u.device, dtype=torch.float32)
    dstate = dh_last.to(torch.float32).contiguous().clone()
    du = torch.empty_like(u)
    ddelta = torch.empty_like(delta)
    dA = torch.zeros((R, Dc, S), **f32)
    dB = torch.empty((R, n_dblock, T, S), **f32)
    dC = torch.empty((R, n_dblock, T, S), **f32)
    dD = torch.empty((R, Dc), **f32)
    _selective_scan_bwd_kernel[(R, n_dblock)](
        u, delta, A, B, C, D, ckpt.contiguous(), dy, dstate, du, ddelta, dA, dB, dC, dD,
        T, Dc, S, nchunk, n_dblock,
        BLOCK_T=block_t, BLOCK_D=block_d, num_warps=8,
    )
    return (
        du,
        ddelta,
        dA.sum(0).to(A.dtype),
        dB.sum(1).to(B.dtype),
        dC.sum(1).to(C.dtype),
        dD.sum(0).to(D.dtype),
        dstate,
    )
