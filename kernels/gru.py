"""Fused GRU-cell gate math (forward and backward) in Triton.

The two GEMMs of a GRU cell, ``gi = x W_ihᵀ + b_ih`` and ``gh = h W_hhᵀ + b_hh`` (each
``[M, 3D]``, gate order r, z, n as in ``torch.nn.GRUCell``), stay with cuBLAS; these kernels fuse
everything after them::

    r  = σ(gi_r + gh_r)
    z  = σ(gi_z + gh_z)
    n  = tanh(gi_n + r ⊙ gh_n)
    h' = (1 − z) ⊙ n + z ⊙ h

The backward recomputes r, z, n from the saved ``gi``/``gh`` and writes ``dgi``, ``dgh`` (from
which the launcher's caller gets the weight, bias and input gradients with GEMMs) and the direct
part of ``dh``. Math in fp32 whatever the storage dtype. σ and tanh are written with ``tl.exp``
(no libdevice, so they also run under the interpreter).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # tanh(x) = 2σ(2x) − 1, stable at both ends
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def _tile(M, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """(bounds mask, offsets into [M, 3D] gates, offsets into [M, D]) of this program's tile."""
    o_m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    o_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    m = (o_m < M)[:, None] & (o_d < D)[None, :]
    return m, o_m[:, None] * (3 * D) + o_d[None, :], o_m[:, None] * D + o_d[None, :]


@triton.jit
def _gates(gi, gh, h, m, o_g, o_h, D: tl.constexpr):
    """r, z, n, gh_n and h for one tile, in fp32."""
    b_ir = tl.load(gi + o_g, mask=m, other=0.0).to(tl.float32)
    b_iz = tl.load(gi + o_g + D, mask=m, other=0.0).to(tl.float32)
    b_in = tl.load(gi + o_g + 2 * D, mask=m, other=0.0).to(tl.float32)
    b_hr = tl.load(gh + o_g, mask=m, other=0.0).to(tl.float32)
    b_hz = tl.load(gh + o_g + D, mask=m, other=0.0).to(tl.float32)
    b_hn = tl.load(gh + o_g + 2 * D, mask=m, other=0.0).to(tl.float32)
    b_h = tl.load(h + o_h, mask=m, other=0.0).to(tl.float32)
    b_r = _sigmoid(b_ir + b_hr)
    b_z = _sigmoid(b_iz + b_hz)
    b_n = _tanh(b_in + b_r * b_hn)
    return b_r, b_z, b_n, b_hn, b_h


@triton.jit(do_not_specialize=["M"])
def _gru_gates_fwd_kernel(gi, gh, h, out, M, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    m, o_g, o_h = _tile(M, D, BLOCK_M, BLOCK_D)
    b_r, b_z, b_n, b_hn, b_h = _gates(gi, gh, h, m, o_g, o_h, D)
    b_out = (1.0 - b_z) * b_n + b_z * b_h
    tl.store(out + o_h, b_out.to(out.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=["M"])
def _gru_gates_bwd_kernel(
    gi, gh, h, dout, dgi, dgh, dh, M, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr
):
    m, o_g, o_h = _tile(M, D, BLOCK_M, BLOCK_D)
    b_r, b_z, b_n, b_hn, b_h = _gates(gi, gh, h, m, o_g, o_h, D)
    b_do = tl.load(dout + o_h, mask=m, other=0.0).to(tl.float32)
    # h' = (1 - z) n + z h
    b_dpn = b_do * (1.0 - b_z) * (1.0 - b_n * b_n)  # through tanh
    b_dpz = b_do * (b_h - b_n) * b_z * (1.0 - b_z)  # through σ
    b_dpr = b_dpn * b_hn * b_r * (1.0 - b_r)
    tl.store(dgi + o_g, b_dpr.to(dgi.dtype.element_ty), mask=m)
    tl.store(dgi + o_g + D, b_dpz.to(dgi.dtype.element_ty), mask=m)
    tl.store(dgi + o_g + 2 * D, b_dpn.to(dgi.dtype.element_ty), mask=m)
    tl.store(dgh + o_g, b_dpr.to(dgh.dtype.element_ty), mask=m)
    tl.store(dgh + o_g + D, b_dpz.to(dgh.dtype.element_ty), mask=m)
    tl.store(dgh + o_g + 2 * D, (b_dpn * b_r).to(dgh.dtype.element_ty), mask=m)
    tl.store(dh + o_h, (b_do * b_z).to(dh.dtype.element_ty), mask=m)


def _blocks(M: int, D: int) -> tuple[int, int]:
    """(rows, columns) of a program's tile: 1,024 elements (8 per thread with 4 warps). 4,096-element
    tiles spill in the backward at sm_90 (255 registers + 8 B with 4 or 8 warps, tests/aot_sm90.py
    --tiles); 1,024 fit in 72 registers, 7 CTAs per SM."""
    block_d = min(256, max(16, triton.next_power_of_2(D)))
    block_m = max(1, min(16, 1024 // block_d))
    return block_m, block_d


@functools.lru_cache(maxsize=512)
def _plan(M: int, D: int) -> tuple[int, int, tuple[int, int]]:
    """(BLOCK_M, BLOCK_D, grid), once per shape (a repeated call only launches)."""
    bm, bd = _blocks(M, D)
    return bm, bd, (-(-M // bm), -(-D // bd))


def _run(kernel, *tensors, M: int, D: int):
    if M == 0:
        return
    bm, bd, grid = _plan(M, D)
    kernel[grid](*tensors, M, D=D, BLOCK_M=bm, BLOCK_D=bd, num_warps=4)


def gru_gates_fwd(gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``h' [M, D]`` from contiguous ``gi, gh [M, 3D]`` and ``h [M, D]``."""
    M, D = h.shape
    out = torch.empty_like(h)
    _run(_gru_gates_fwd_kernel, gi, gh, h, out, M=M, D=D)
    return out


def gru_gates_bwd(gi, gh, h, dout):
    """``(dgi [M, 3D], dgh [M, 3D], dh_direct [M, D])`` for the gate math (all contiguous)."""
    M, D = h.shape
    dgi = torch.empty_like(gi)
    dgh = torch.empty_like(gh)
    dh = torch.empty_like(h)
    _run(_gru_gates_bwd_kernel, gi, gh, h, dout, dgi, dgh, dh, M=M, D=D)
    return dgi, dgh, dh
