"""Row LayerNorm over the last dimension that writes its output in the compute dtype.

What the folded one-head slot-attention path (``SlotAttention(backend="triton")``) runs for its
input LayerNorm. Under bf16 autocast with fp32 inputs and parameters, ATen's LayerNorm runs in
fp32 and writes an fp32 ``[rows, D]`` output that the module then converts to bf16 (and, in the
backward, converts the bf16 input gradient back to fp32 before ``native_layer_norm_backward``):
four extra ``[rows, D]`` passes. These kernels read x in its own dtype and write the normalised,
affine-transformed x directly in the compute dtype (the conversion is the store); the backward
reads x, dy (compute dtype) and the fp32 row statistics and writes dx in x's dtype.

- ``_layer_norm_fwd_kernel`` (grid: row tiles): ``y = (x − mean)·rstd·w + b`` with the statistics in
  fp32 (two passes over the row held in registers, as ``torch.var(unbiased=False)``); writes y and
  ``stats [2, rows]`` fp32 (mean, rstd).
- ``_layer_norm_bwd_kernel`` (grid: G programs, each a grid-stride loop over row tiles):
  ``dx = rstd·(g − x̂·mean(g·x̂) − mean(g))`` with ``g = dy·w``, and per-program fp32 partials of
  ``dw = Σ dy·x̂`` and ``db = Σ dy`` (``part [G, 2, D]``); the launcher sums the G partials with one
  ``torch.sum`` (no atomics, no cross-program synchronisation: deterministic).

Layouts: x, y, dy, dx contiguous ``[rows, D]`` (any leading shape flattened); w, b ``[D]`` or None.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .slot_attention import _INTERPRET, _next_pow2, arg_flags

#: widest row the kernels take (the whole row stays in registers); wider rows use ATen's LayerNorm.
MAX_D = 8192


@arg_flags(dict(HAS_W="w", HAS_B="b"))
@triton.jit(do_not_specialize=["rows"])
def _layer_norm_fwd_kernel(
    x, w, b, y, stats,
    rows, eps,
    D: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
):
    i_r = tl.program_id(0).to(tl.int64)
    o_r = i_r * BLOCK_R + tl.arange(0, BLOCK_R)
    m_r = o_r < rows
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    m_x = m_r[:, None] & m_d[None, :]
    p_x = o_r[:, None] * D + o_d[None, :]
    b_x = tl.load(x + p_x, mask=m_x, other=0.0).to(tl.float32)
    b_mean = tl.sum(b_x, axis=1) / D
    b_xc = tl.where(m_x, b_x - b_mean[:, None], 0.0)
    b_rstd = 1.0 / tl.sqrt(tl.sum(b_xc * b_xc, axis=1) / D + eps)
    b_y = b_xc * b_rstd[:, None]
    if HAS_W:
        b_y = b_y * tl.load(w + o_d, mask=m_d, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        b_y = b_y + tl.load(b + o_d, mask=m_d, other=0.0).to(tl.float32)[None, :]
    tl.store(y + p_x, b_y.to(y.dtype.element_ty), mask=m_x)
    tl.store(stats + o_r, b_mean, mask=m_r)
    tl.store(stats + rows + o_r, b_rstd, mask=m_r)


@arg_flags(dict(HAS_W="w", HAS_PART="part"))
@triton.jit(do_not_specialize=["rows"])
def _layer_norm_bwd_kernel(
    x, w, dy, stats, dx, part,
    rows,
    D: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_W: tl.constexpr, HAS_PART: tl.constexpr,
):
    i_g = tl.program_id(0)
    G = tl.num_programs(0)
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    b_w = tl.full([BLOCK_D], 1.0, dtype=tl.float32)
    if HAS_W:
        b_w = tl.load(w + o_d, mask=m_d, other=0.0).to(tl.float32)
    b_dw = tl.zeros([BLOCK_D], dtype=tl.float32)
    b_db = tl.zeros([BLOCK_D], dtype=tl.float32)
    for r0 in tl.range(i_g * BLOCK_R, rows, G * BLOCK_R):
        o_r = tl.arange(0, BLOCK_R).to(tl.int64) + r0
        m_r = o_r < rows
        m_x = m_r[:, None] & m_d[None, :]
        p_x = o_r[:, None] * D + o_d[None, :]
        b_mean = tl.load(stats + o_r, mask=m_r, other=0.0)
        b_rstd = tl.load(stats + rows + o_r, mask=m_r, other=0.0)
        b_x = tl.load(x + p_x, mask=m_x, other=0.0).to(tl.float32)
        b_dy = tl.load(dy + p_x, mask=m_x, other=0.0).to(tl.float32)
        b_xh = tl.where(m_x, (b_x - b_mean[:, None]) * b_rstd[:, None], 0.0)
        b_g = b_dy * b_w[None, :]
        c_1 = tl.sum(b_xh * b_g, axis=1) / D
        c_2 = tl.sum(b_g, axis=1) / D
        b_dx = (b_g - b_xh * c_1[:, None] - c_2[:, None]) * b_rstd[:, None]
        tl.store(dx + p_x, b_dx.to(dx.dtype.element_ty), mask=m_x)
        if HAS_PART:
            b_dw += tl.sum(b_dy * b_xh, axis=0)
            b_db += tl.sum(b_dy, axis=0)
    if HAS_PART:  # this program's partials [2, D] of part [G, 2, D]
        p_part = part + i_g.to(tl.int64) * 2 * D + o_d
        tl.store(p_part, b_dw, mask=m_d)
        tl.store(p_part + D, b_db, mask=m_d)


# ------------------------------------------------------------------------------------ launchers
def _tiles(D: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_R rows per tile, BLOCK_D, num_warps). GPU: one row per tile from D = 1024 up (more rows
    for narrower D, ≤ 1024 elements per tile), 4 warps (8 from D = 2048, 16 above 4096; no spills at
    sm_90 for D = 40..8192). Interpreter: 16 rows."""
    bd = max(16, _next_pow2(D))
    if device.type != "cuda" or _INTERPRET:
        return 16, bd, 4
    return max(1, 1024 // bd), bd, 4 if bd <= 1024 else 8 if bd <= 4096 else 16


def _programs(rows: int, block_r: int, device: torch.device) -> int:
    """Backward grid: one program per row tile, at most 4 per SM (each reduces its rows' dw/db
    partials in registers; the partials are ``[G, 2, D]`` fp32)."""
    tiles = max(1, triton.cdiv(rows, block_r))
    if device.type != "cuda" or _INTERPRET:
        return min(tiles, 64)
    from .slot_attention import _num_sms  # noqa: PLC0415

    return min(tiles, 4 * _num_sms(device.index if device.index is not None else torch.cuda.current_device()))


def check_width(D: int) -> None:
    if not 1 <= D <= MAX_D:
        raise ValueError(f"the Triton LayerNorm takes rows of 1..{MAX_D} elements, got D={D}")


def layer_norm_fwd(x: torch.Tensor, w, b, eps: float, out_dtype: torch.dtype):
    """x contiguous ``[..., D]`` → ``(y [..., D] in out_dtype, stats [2, rows] fp32 (mean, rstd))``."""
    D = x.shape[-1]
    check_width(D)
    rows = x.numel() // D
    y = torch.empty(x.shape, device=x.device, dtype=out_dtype)
    stats = torch.empty((2, rows), device=x.device, dtype=torch.float32)
    br, bd, warps = _tiles(D, x.device)
    if rows > 0:
        _layer_norm_fwd_kernel[(triton.cdiv(rows, br),)](
            x, w, b, y, stats, rows, float(eps), D=D, BLOCK_R=br, BLOCK_D=bd, num_warps=warps,
        )
    return y, stats


def layer_norm_bwd(x: torch.Tensor, w, dy: torch.Tensor, stats: torch.Tensor, need_dwb: bool,
                   param_dtype: torch.dtype):
    """``(dx like x, dwb [2, D] in param_dtype — dw and db — or None)``."""
    D = x.shape[-1]
    rows = x.numel() // D
    dx = torch.empty_like(x)
    br, bd, warps = _tiles(D, x.device)
    G = _programs(rows, br, x.device)
    part = torch.empty((G, 2, D), device=x.device, dtype=torch.float32) if need_dwb else None
    if rows > 0:
        _layer_norm_bwd_kernel[(G,)](x, w, dy, stats, dx, part, rows, D=D, BLOCK_R=br, BLOCK_D=bd, num_warps=warps)
    if part is None:
        return dx, None
    # the G programs' partials summed in one launch (no rows: sums over nothing)
    return dx, (part.sum(0).to(param_dtype) if rows > 0 else part.new_zeros((2, D), dtype=param_dtype))


def _nbytes(t) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def _traffic_fwd(grid, a):
    """x, w, b read once; y and the fp32 row statistics written once. FLOPs: ~8 per element."""
    read = _nbytes(a["x"]) + _nbytes(a.get("w")) + _nbytes(a.get("b"))
    written = _nbytes(a["y"]) + _nbytes(a["stats"])
    return read, written, 8 * a["x"].numel()


def _traffic_bwd(grid, a):
    """x, dy and the statistics read once, dx and the dw/db partials written once (their sum is an
    aten op, counted as such). FLOPs: ~12 per element."""
    read = _nbytes(a["x"]) + _nbytes(a["dy"]) + _nbytes(a["stats"]) + _nbytes(a.get("w"))
    written = _nbytes(a["dx"]) + _nbytes(a.get("part"))
    return read, written, 12 * a["x"].numel()


# HBM traffic per launch: kernel name -> fn(grid, args) -> (bytes read, bytes written, FLOPs).
TRAFFIC = {
    "_layer_norm_fwd_kernel": _traffic_fwd,
    "_layer_norm_bwd_kernel": _traffic_bwd,
}
