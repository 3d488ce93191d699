"""CLIP pre-processing of uint8 video frames on the GPU: PIL's antialiased bicubic resize of the
shortest side, centre crop, rescale and normalise, in the same integer arithmetic as the C++ op
(``csrc/cpu/video.cpp``), so the output is bit-identical to it (and to transformers'
``CLIPImageProcessor`` with PIL).

Two passes, each computing only pixels inside the crop:

1. ``_clip_hpass_kernel``: for the input rows the crop reads, the crop's columns of the horizontal
   resample: ``tmp[t, c, r, x] = clip8(sum_i src[t, row0 + r, first_h[x] + i, c] * w_h[x, i])``,
   uint8 ``[T, 3, R, C]`` (planar).
2. ``_clip_vpass_kernel``: the vertical resample of ``tmp`` for the crop's rows, then
   ``out[t, c, y, x] = lut[c, clip8(...)]``, where ``lut`` holds the normalised value of each of the
   256 levels (transformers' float arithmetic, computed once on the host).

``clip8(v) = clamp(v >> 22, 0, 255)``: weights are 22-bit fixed point, accumulated in int32 with
``1 << 21`` for rounding, exactly as Pillow does. Taps and the table come from the caller
(``slotvlm.video``); this module only owns grids, block sizes and contiguity.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

PRECISION_BITS = 22


@triton.jit
def _clip8(acc):
    return tl.minimum(tl.maximum(acc >> 22, 0), 255)


@triton.jit(do_not_specialize=["H", "W", "R", "C", "row0"])
def _clip_hpass_kernel(src, tmp, first, length, weight, H, W, R, C, row0,
                       KSIZE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    i_t = tl.program_id(0).to(tl.int64)
    i_r = tl.program_id(1)
    i_c = tl.program_id(2)
    o_r = i_r * BLOCK_R + tl.arange(0, BLOCK_R)
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_r = o_r < R
    m_c = o_c < C
    b_first = tl.load(first + o_c, mask=m_c, other=0)
    b_len = tl.load(length + o_c, mask=m_c, other=0)
    p_row = src + (i_t * H + row0 + o_r).to(tl.int64)[:, None] * (W * 3)
    acc_r = tl.full((BLOCK_R, BLOCK_C), 1 << 21, tl.int32)
    acc_g = tl.full((BLOCK_R, BLOCK_C), 1 << 21, tl.int32)
    acc_b = tl.full((BLOCK_R, BLOCK_C), 1 << 21, tl.int32)
    for i in range(KSIZE):
        b_w = tl.load(weight + o_c * KSIZE + i, mask=m_c, other=0)[None, :]
        m = m_r[:, None] & (m_c & (i < b_len))[None, :]
        p = p_row + ((b_first + i) * 3)[None, :]
        acc_r += tl.load(p, mask=m, other=0).to(tl.int32) * b_w
        acc_g += tl.load(p + 1, mask=m, other=0).to(tl.int32) * b_w
        acc_b += tl.load(p + 2, mask=m, other=0).to(tl.int32) * b_w
    m = m_r[:, None] & m_c[None, :]
    o = (i_t * 3 * R + o_r)[:, None] * C + o_c[None, :]
    tl.store(tmp + o, _clip8(acc_r).to(tl.uint8), mask=m)
    tl.store(tmp + o + R * C, _clip8(acc_g).to(tl.uint8), mask=m)
    tl.store(tmp + o + 2 * R * C, _clip8(acc_b).to(tl.uint8), mask=m)


@triton.jit(do_not_specialize=["R", "C", "row0"])
def _clip_vpass_kernel(tmp, out, lut, first, length, weight, R, C, row0,
                       KSIZE: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr):
    i_t = tl.program_id(0).to(tl.int64)
    i_y = tl.program_id(1)
    i_x = tl.program_id(2)
    o_y = i_y * BLOCK_Y + tl.arange(0, BLOCK_Y)
    o_x = i_x * BLOCK_X + tl.arange(0, BLOCK_X)
    m_y = o_y < C
    m_x = o_x < C
    b_first = tl.load(first + o_y, mask=m_y, other=0) - row0
    b_len = tl.load(length + o_y, mask=m_y, other=0)
    m_out = m_y[:, None] & m_x[None, :]
    for c in tl.static_range(3):
        acc = tl.full((BLOCK_Y, BLOCK_X), 1 << 21, tl.int32)
        p_plane = tmp + (i_t * 3 + c) * R * C
        for i in range(KSIZE):
            b_w = tl.load(weight + o_y * KSIZE + i, mask=m_y, other=0)[:, None]
            m = (m_y & (i < b_len))[:, None] & m_x[None, :]
            p = p_plane + (b_first + i).to(tl.int64)[:, None] * C + o_x[None, :]
            acc += tl.load(p, mask=m, other=0).to(tl.int32) * b_w
        b_v = tl.load(lut + c * 256 + _clip8(acc), mask=m_out, other=0.0)
        o = ((i_t * 3 + c) * C + o_y)[:, None] * C + o_x[None, :]
        tl.store(out + o, b_v, mask=m_out)


def clip_resample_fwd(frames: torch.Tensor, taps_h, taps_v, row0: int, rows: int, lut: torch.Tensor) -> torch.Tensor:
    """Launch both passes.

    Args:
        frames: uint8 ``[T, H, W, 3]`` (made contiguous here).
        taps_h / taps_v: ``(first int32 [C], length int32 [C], weights int32 [C, K])`` of the crop's
            columns / rows, on ``frames``' device (``slotvlm.ops.video_ref.resample_taps``).
        row0, rows: the input rows ``[row0, row0 + rows)`` that the crop reads.
        lut: ``[3, 256]`` in the output dtype: the normalised value of each level, per channel.

    Returns:
        ``[T, 3, C, C]`` in ``lut``'s dtype.
    """
    frames = frames.contiguous()
    T, H, W, _ = frames.shape
    C = taps_h[0].shape[0]
    out = torch.empty((T, 3, C, C), dtype=lut.dtype, device=frames.device)
    if T == 0:
        return out
    tmp = torch.empty((T, 3, rows, C), dtype=torch.uint8, device=frames.device)
    interp = os.environ.get("TRITON_INTERPRET", "0") == "1"
    # Larger tiles under the interpreter (fewer Python-level programs); GPU tiles keep registers low.
    br, bc = (64, 128) if interp else (16, 64)
    grid = (T, triton.cdiv(rows, br), triton.cdiv(C, bc))
    _clip_hpass_kernel[grid](frames, tmp, *taps_h, H, W, rows, C, row0,
                             KSIZE=taps_h[2].shape[1], BLOCK_R=br, BLOCK_C=bc)
    by, bx = (64, 128) if interp else (16, 64)
    grid = (T, triton.cdiv(C, by), triton.cdiv(C, bx))
    _clip_vpass_kernel[grid](tmp, out, lut.contiguous(), *taps_v, rows, C, row0,
                             KSIZE=taps_v[2].shape[1], BLOCK_Y=by, BLOCK_X=bx)
    return out
