"""Backward of the folded one-head slot-attention step with the input gradient deferred.

The folded step (``slotvlm.ops.fused._projected_step``) attends with keys = values = the
normalised inputs x and slot queries ``q' = q W_k`` (plus a per-slot logit bias ``c = q·b_k``)::

    s[n, k] = scale · (<x[n], q'[k]> + c[k]);  a = softmax over k;  w = (a + eps)·valid
    den[k]  = Σ_n w[n, k];  W = w / max(den, floor);  u'[k] = Σ_n W[n, k] x[n]

Every iteration of the module reads the same x, so its gradient is a sum over iterations. Instead
of writing a full-size ``dx`` per iteration and adding them up, each iteration's backward writes only
small per-problem tensors, and one final pass writes ``dx`` once:

- ``_fold_scores_bwd_kernel`` (per iteration; grid problems × N-splits): streams x once with tokens
  on the MMA's M side (``x·q'ᵀ`` and ``x·du'ᵀ``, ``[BLOCK_N, BLOCK_K]``), writes the softmax ``a`` and
  ``dW = <du'[k], x[n]>`` (``[rows, 2, BLOCK_K]`` fp32) and ``g[k] = Σ_n W·dW`` — the correction term
  computed from the *same* dW values it is subtracted from, so ``Σ_n W (dW − g) = 0`` holds to
  rounding and a slot that owns one token (or loses every token: den tiny) keeps torch's error.
- ``_fold_dq_bwd_kernel`` (per iteration; grid problems × D-chunks): from a, dW, g it forms
  ``ds = a ⊙ (da − Σ_k a·da)·scale`` with ``da = valid·(dW − g)/den (+ dattn)``, accumulates
  ``dq' = dsᵀ x`` for its D-chunk (no logit recompute: the scores come from the small tensor), the
  bias gradient ``Σ_n ds``, and (D-chunk 0) stores ``ds`` and ``W`` in the iteration's token.
- ``_fold_dx_kernel`` (once per module backward; grid token tiles × D-chunks):
  ``dx[n] = Σ_iterations Σ_k ds[n, k]·q'[k] + W[n, k]·du'[k]`` — a ``[BLOCK_N, I·K] × [I·K, BLOCK_D]``
  product per tile, written once.

Layouts: x ``[P, N, D]`` (padded, optional mask ``[P, N]`` uint8) or ``[T, D]`` packed with
``cu_seqlens``; q', du', dq' ``[P, K, D]``; rows = P·N (padded) or T (packed), row of token n of
problem p = p·N + n (padded) or cu[p] + n. Tokens: ``tok_s [rows, 2, BLOCK_K]`` (ds, W) and
``tok_q [P, 2, K, D]`` (q', du'), both in x's dtype.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .slot_attention import (
    DENOM_FLOOR, _INTERPRET, _dot_prec, _n_split, _next_pow2, _token_range, _valid_tokens, arg_flags,
)


@triton.jit
def _softmax_over_slots(b_s, b_c, m_k, scale):
    """Token-major logits ``[BLOCK_N, BLOCK_K]`` (+ the per-slot bias, · scale) → softmax over the
    slots (axis 1), fp32; padded slot columns get 0."""
    b_s = tl.where(m_k[None, :], (b_s + b_c[None, :]) * scale, float("-inf"))
    b_e = tl.exp(b_s - tl.max(b_s, axis=1)[:, None])
    return b_e / tl.sum(b_e, axis=1)[:, None]


@arg_flags(dict(HAS_MASK="mask", IS_VARLEN="cu_seqlens", HAS_BIAS="bias", STORE_ATTN="attn"),
           missing=dict(NORMALIZE="ws_acc"))
@triton.jit(do_not_specialize=["N", "N_PER_SPLIT"])
def _fold_fwd_kernel(
    x, q, bias, mask, cu_seqlens, out, den, attn, ws_acc, ws_den,
    scale, eps, floor,
    N, N_PER_SPLIT,
    s_xp, s_xn, s_qp, s_qk, s_mp, s_op, s_ok, s_ap, s_ak,
    K: tl.constexpr, D: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr,
    HAS_MASK: tl.constexpr, IS_VARLEN: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_ATTN: tl.constexpr,
    NORMALIZE: tl.constexpr,
):
    """One folded step for one (problem, D-chunk of u', N-split): tokens on the MMA's M side
    (``x·q'ᵀ`` is ``[BLOCK_N, BLOCK_K]``), softmax over the slots in registers, ``Σ w·x`` and
    ``Σ w`` in fp32. Writes u' (and, in column D of ``out``, ``Σ_n W = den / max(den, floor)``:
    1, or 0 for an empty problem — what multiplies ``b_v``), or fp32 partials with an N split."""
    NUM_D: tl.constexpr = (D + BLOCK_D - 1) // BLOCK_D
    i_p = (tl.program_id(0) // NUM_D).to(tl.int64)
    i_d = tl.program_id(0) % NUM_D
    i_s = tl.program_id(1)
    bos, n_start, n_end = _token_range(cu_seqlens, i_p, i_s, N, N_PER_SPLIT, IS_VARLEN)
    o_k = tl.arange(0, BLOCK_K)
    m_k = o_k < K
    o_dv = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m_dv = o_dv < D
    b_c = tl.zeros([BLOCK_K], dtype=tl.float32)
    if HAS_BIAS:
        b_c = tl.load(bias + i_p * s_qp + o_k * s_qk, mask=m_k, other=0.0).to(tl.float32)
    p_x = x + i_p * s_xp
    p_q = q + i_p * s_qp

    b_acc = tl.zeros([BLOCK_K, BLOCK_D], dtype=tl.float32)
    b_den = tl.zeros([BLOCK_K], dtype=tl.float32)
    for n0 in tl.range(n_start, n_end, BLOCK_N):
        o_n = n0 + tl.arange(0, BLOCK_N)
        m_n = o_n < n_end
        o_t = bos + o_n
        b_s = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for d0 in tl.range(0, D, BLOCK_D):
            o_d = d0 + tl.arange(0, BLOCK_D)
            m_d = o_d < D
            b_x = tl.load(p_x + o_t[:, None] * s_xn + o_d[None, :], mask=m_n[:, None] & m_d[None, :], other=0.0)
            b_qt = tl.load(p_q + o_k[None, :] * s_qk + o_d[:, None], mask=m_d[:, None] & m_k[None, :], other=0.0)
            b_s += tl.dot(b_x, b_qt.to(b_x.dtype), input_precision=DOT_PREC)
        b_a = _softmax_over_slots(b_s, b_c, m_k, scale)
        m_w = _valid_tokens(mask, i_p, s_mp, o_n, m_n, HAS_MASK)[:, None] & m_k[None, :]
        b_w = tl.where(m_w, b_a + eps, 0.0)
        b_den += tl.sum(b_w, axis=0)
        b_xv = tl.load(p_x + o_t[:, None] * s_xn + o_dv[None, :], mask=m_n[:, None] & m_dv[None, :], other=0.0)
        b_acc += tl.dot(tl.trans(b_w.to(b_xv.dtype)), b_xv, input_precision=DOT_PREC)
        if STORE_ATTN:
            if i_d == 0:
                p_a = attn + i_p * s_ap + o_k[None, :] * s_ak + o_t[:, None]
                tl.store(p_a, tl.where(m_w, b_a, 0.0).to(attn.dtype.element_ty), mask=m_n[:, None] & m_k[None, :])
    if NORMALIZE:
        b_dc = tl.maximum(b_den, floor)
        p_o = out + i_p * s_op + o_k[:, None] * s_ok
        tl.store(p_o + o_dv[None, :], (b_acc / b_dc[:, None]).to(out.dtype.element_ty), mask=m_k[:, None] & m_dv[None, :])
        if i_d == 0:
            tl.store(out + i_p * s_op + o_k * s_ok + D, (b_den / b_dc).to(out.dtype.element_ty), mask=m_k)
            tl.store(den + i_p * K + o_k, b_den, mask=m_k)
    else:  # fp32 partials: ws_acc [S, P, K, D], ws_den [S, P, K]
        i_sp = i_s.to(tl.int64) * (tl.num_programs(0) // NUM_D) + i_p
        tl.store(ws_acc + (i_sp * K + o_k[:, None]) * D + o_dv[None, :], b_acc, mask=m_k[:, None] & m_dv[None, :])
        if i_d == 0:
            tl.store(ws_den + i_sp * K + o_k, b_den, mask=m_k)


@arg_flags(dict(HAS_MASK="mask", IS_VARLEN="cu_seqlens", HAS_BIAS="bias"))
@triton.jit(do_not_specialize=["N", "N_PER_SPLIT"])
def _fold_scores_bwd_kernel(
    x, q, du, mask, cu_seqlens, bias, den, sd, ws_g,
    scale, eps, floor,
    N, N_PER_SPLIT,
    s_xp, s_xn, s_qp, s_qk, s_dup, s_duk, s_mp,
    K: tl.constexpr, D: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr,
    HAS_MASK: tl.constexpr, IS_VARLEN: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    i_p = tl.program_id(0).to(tl.int64)
    i_s = tl.program_id(1)
    bos, n_start, n_end = _token_range(cu_seqlens, i_p, i_s, N, N_PER_SPLIT, IS_VARLEN)
    o_k = tl.arange(0, BLOCK_K)
    m_k = o_k < K
    b_c = tl.zeros([BLOCK_K], dtype=tl.float32)
    if HAS_BIAS:
        b_c = tl.load(bias + i_p * s_qp + o_k * s_qk, mask=m_k, other=0.0).to(tl.float32)
    b_dc = tl.maximum(tl.load(den + i_p * K + o_k, mask=m_k, other=1.0), floor)
    p_x = x + i_p * s_xp
    p_q = q + i_p * s_qp
    p_du = du + i_p * s_dup

    b_g = tl.zeros([BLOCK_K], dtype=tl.float32)
    for n0 in tl.range(n_start, n_end, BLOCK_N):
        o_n = n0 + tl.arange(0, BLOCK_N)
        m_n = o_n < n_end
        o_t = bos + o_n
        b_s = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        b_dw = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for d0 in tl.range(0, D, BLOCK_D):
            o_d = d0 + tl.arange(0, BLOCK_D)
            m_d = o_d < D
            b_x = tl.load(p_x + o_t[:, None] * s_xn + o_d[None, :], mask=m_n[:, None] & m_d[None, :], other=0.0)
            m_qt = m_d[:, None] & m_k[None, :]
            b_qt = tl.load(p_q + o_k[None, :] * s_qk + o_d[:, None], mask=m_qt, other=0.0)
            b_dut = tl.load(p_du + o_k[None, :] * s_duk + o_d[:, None], mask=m_qt, other=0.0)
            b_s += tl.dot(b_x, b_qt.to(b_x.dtype), input_precision=DOT_PREC)
            b_dw += tl.dot(b_x, b_dut.to(b_x.dtype), input_precision=DOT_PREC)
        b_a = _softmax_over_slots(b_s, b_c, m_k, scale)
        m_w = _valid_tokens(mask, i_p, s_mp, o_n, m_n, HAS_MASK)[:, None] & m_k[None, :]
        b_W = tl.where(m_w, b_a + eps, 0.0) / b_dc[None, :]
        b_g += tl.sum(b_W * b_dw, axis=0)
        p_sd = sd + (i_p * N + o_t)[:, None] * (2 * BLOCK_K) + o_k[None, :]
        tl.store(p_sd, b_a, mask=m_n[:, None])
        tl.store(p_sd + BLOCK_K, b_dw, mask=m_n[:, None])
    tl.store(ws_g + (i_s.to(tl.int64) * tl.num_programs(0) + i_p) * BLOCK_K + o_k, b_g)


@arg_flags(dict(HAS_MASK="mask", IS_VARLEN="cu_seqlens", HAS_DATTN="dattn"))
@triton.jit(do_not_specialize=["N", "MAX_N"])
def _fold_dq_bwd_kernel(
    x, q, du, sd, g, den, dattn, mask, cu_seqlens, dq, dbias, tok_s, tok_q,
    scale, eps, floor,
    N, MAX_N,
    s_xp, s_xn, s_mp, s_ap, s_ak, s_qp, s_qk, s_dqp, s_dqk, s_dup, s_duk,
    K: tl.constexpr, D: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr,
    HAS_MASK: tl.constexpr, IS_VARLEN: tl.constexpr, HAS_DATTN: tl.constexpr,
):
    i_p = tl.program_id(0).to(tl.int64)
    i_d = tl.program_id(1)
    bos, n_start, n_end = _token_range(cu_seqlens, i_p, 0, N, MAX_N, IS_VARLEN)
    o_k = tl.arange(0, BLOCK_K)
    m_k = o_k < K
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m_d = o_d < D
    b_draw = tl.load(den + i_p * K + o_k, mask=m_k, other=1.0)
    b_dc = tl.maximum(b_draw, floor)
    b_g = tl.load(g + i_p * BLOCK_K + o_k)
    b_g = tl.where(b_draw >= floor, b_g, 0.0)  # below the floor the denominator is a constant
    p_x = x + i_p * s_xp

    b_dq = tl.zeros([BLOCK_K, BLOCK_D], dtype=tl.float32)
    b_db = tl.zeros([BLOCK_K], dtype=tl.float32)
    for n0 in tl.range(n_start, n_end, BLOCK_N):
        o_n = n0 + tl.arange(0, BLOCK_N)
        m_n = o_n < n_end
        o_t = bos + o_n
        row = (i_p * N + o_t)[:, None]
        p_sd = sd + row * (2 * BLOCK_K) + o_k[None, :]
        b_a = tl.load(p_sd, mask=m_n[:, None], other=0.0)
        b_dw = tl.load(p_sd + BLOCK_K, mask=m_n[:, None], other=0.0)
        m_w = _valid_tokens(mask, i_p, s_mp, o_n, m_n, HAS_MASK)[:, None] & m_k[None, :]
        b_W = tl.where(m_w, b_a + eps, 0.0) / b_dc[None, :]
        b_da = tl.where(m_w, (b_dw - b_g[None, :]) / b_dc[None, :], 0.0)
        if HAS_DATTN:
            p_da = dattn + i_p * s_ap + o_k[None, :] * s_ak + o_t[:, None]
            b_da += tl.where(m_w, tl.load(p_da, mask=m_n[:, None] & m_k[None, :], other=0.0).to(tl.float32), 0.0)
        b_ds = b_a * (b_da - tl.sum(b_a * b_da, axis=1)[:, None]) * scale
        if i_d == 0:
            b_db += tl.sum(b_ds, axis=0)
            p_tok = tok_s + row * (2 * BLOCK_K) + o_k[None, :]
            tl.store(p_tok, b_ds.to(tok_s.dtype.element_ty), mask=m_n[:, None])
            tl.store(p_tok + BLOCK_K, b_W.to(tok_s.dtype.element_ty), mask=m_n[:, None])
        b_x = tl.load(p_x + o_t[:, None] * s_xn + o_d[None, :], mask=m_n[:, None] & m_d[None, :], other=0.0)
        b_dq += tl.dot(tl.trans(b_ds.to(b_x.dtype)), b_x, input_precision=DOT_PREC)
    m_kd = m_k[:, None] & m_d[None, :]
    p_dq = dq + i_p * s_dqp + o_k[:, None] * s_dqk + o_d[None, :]
    tl.store(p_dq, b_dq.to(dq.dtype.element_ty), mask=m_kd)
    # this iteration's q' and du' into its token (tok_q [P, 2, K, D]), for the final dx pass
    p_tq = tok_q + (i_p * 2 * K + o_k[:, None]) * D + o_d[None, :]
    b_q = tl.load(q + i_p * s_qp + o_k[:, None] * s_qk + o_d[None, :], mask=m_kd, other=0.0)
    b_du = tl.load(du + i_p * s_dup + o_k[:, None] * s_duk + o_d[None, :], mask=m_kd, other=0.0)
    tl.store(p_tq, b_q.to(tok_q.dtype.element_ty), mask=m_kd)
    tl.store(p_tq + K * D, b_du.to(tok_q.dtype.element_ty), mask=m_kd)
    if i_d == 0:
        tl.store(dbias + i_p * s_dqp + o_k * s_dqk, b_db.to(dbias.dtype.element_ty), mask=m_k)


@arg_flags(dict(IS_VARLEN="cu_seqlens"))
@triton.jit(do_not_specialize=["N", "ITERS", "N_TILES"])
def _fold_dx_kernel(
    tok_s, tok_q, cu_seqlens, dx,
    N, ITERS, N_TILES,
    s_si, s_qi, s_xp, s_xn,
    K: tl.constexpr, D: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    i_p = (tl.program_id(0) // N_TILES).to(tl.int64)
    i_n = tl.program_id(0) % N_TILES
    i_d = tl.program_id(1)
    bos, n_start, n_end = _token_range(cu_seqlens, i_p, i_n, N, BLOCK_N, IS_VARLEN)
    o_n = n_start + tl.arange(0, BLOCK_N)
    m_n = o_n < n_end
    o_t = bos + o_n
    o_k = tl.arange(0, BLOCK_K)
    m_k = o_k < K
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m_d = o_d < D
    p_s = tok_s + (i_p * N + o_t)[:, None] * (2 * BLOCK_K) + o_k[None, :]
    p_q = tok_q + i_p * (2 * K * D) + o_k[:, None] * D + o_d[None, :]
    m_q = m_k[:, None] & m_d[None, :]
    b_dx = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for i in tl.range(0, ITERS):
        b_ds = tl.load(p_s + i * s_si, mask=m_n[:, None], other=0.0)
        b_W = tl.load(p_s + i * s_si + BLOCK_K, mask=m_n[:, None], other=0.0)
        b_q = tl.load(p_q + i * s_qi, mask=m_q, other=0.0)
        b_du = tl.load(p_q + i * s_qi + K * D, mask=m_q, other=0.0)
        b_dx += tl.dot(b_ds, b_q, input_precision=DOT_PREC)
        b_dx += tl.dot(b_W, b_du, input_precision=DOT_PREC)
    tl.store(dx + i_p * s_xp + o_t[:, None] * s_xn + o_d[None, :], b_dx.to(dx.dtype.element_ty), mask=m_n[:, None] & m_d[None, :])


# ------------------------------------------------------------------------------------ launchers
#: GPU tile of each folded kernel: (BLOCK_N, widest BLOCK_D, num_warps, num_stages). Chosen from the
#: sm_90 ahead-of-time report (``python tests/aot_sm90.py --tiles``; registers, spills, occupancy per
#: tile; tests/test_aot_sm90.py fails on any spill): 64-token tiles spill in the forward and the
#: scores backward at D = 1024 (255 registers + 128-496 B of local memory with 4 warps; 8 warps
#: still spill 8 B in the packed forward), 32-token tiles fit in 168-211 registers. The dq and dx
#: passes hold fewer live tiles and keep 64 tokens (wgmma's M) without spilling.
GPU_TILES = {"fwd": (32, 128, 4, 2), "scores": (32, 128, 4, 2), "dq": (64, 128, 4, 2), "dx": (64, 128, 4, 2)}


def _tiles(D: int, device: torch.device, kernel: str = "fwd") -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_D, num_warps, num_stages) of ``kernel`` (a :data:`GPU_TILES` key). Interpreter:
    16-token tiles and one D tile. GPU: :data:`GPU_TILES`, D chunks capped at the head width."""
    dp = max(16, _next_pow2(D))
    if device.type != "cuda" or _INTERPRET:
        return 16, dp, 4, 1
    bn, bd, warps, stages = GPU_TILES[kernel]
    return bn, min(dp, bd), warps, stages


def _tile(tiles, D: int, device: torch.device, kernel: str) -> tuple[int, int, int, int]:
    """A caller's ``tiles`` override — ``(BLOCK_N, BLOCK_D, num_warps[, num_stages])``, used for every
    kernel of the call — or the launcher's own choice for ``kernel``."""
    if tiles is None:
        return _tiles(D, device, kernel)
    bn, bd, warps, *rest = tiles
    return bn, bd, warps, (rest[0] if rest else 2)


def _block_k(K: int) -> int:
    return max(16, _next_pow2(K))


def _seq(x, cu_seqlens, max_seqlen):
    """(N for row arithmetic — 0 when packed —, the longest sequence, x's problem and token strides)."""
    if cu_seqlens is None:
        return x.shape[1], x.shape[1], x.stride(0), x.stride(1)
    return 0, int(max_seqlen), 0, x.stride(0)


def token_shapes(x: torch.Tensor, cu_seqlens, P: int, K: int) -> tuple[tuple, tuple]:
    """Shapes of one iteration's tokens: ``tok_s [rows, 2, BLOCK_K]`` and ``tok_q [P, 2, K, D]``."""
    rows = x.shape[0] * x.shape[1] if cu_seqlens is None else x.shape[0]
    return (rows, 2, _block_k(K)), (P, 2, K, x.shape[-1])


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)  # host arithmetic: triton.cdiv is a constexpr function, ~2 µs per host call


def _key_tiles(tiles):
    return None if tiles is None else tuple(tiles)


# Launch plans: everything a launcher derives from (shapes, dtype, device, overrides) alone — tiles,
# N splits, grids — computed once per shape and cached, so a repeated call (every iteration, every
# step at a static shape) only allocates its outputs and launches. Keys are plain ints, torch
# dtypes/devices and tuples; a few hundred shapes at most in any real run.
@functools.lru_cache(maxsize=512)
def _fwd_plan(P: int, K: int, D: int, max_n: int, device: torch.device, dtype: torch.dtype, n_split, tiles):
    """(BLOCK_N, BLOCK_D, num_warps, num_stages, S, grid, N_PER_SPLIT, BLOCK_K, DOT_PREC) of fold_fwd."""
    bn, bd, warps, stages = _tile(tiles, D, device, "fwd")
    S = n_split if n_split is not None else _n_split(P, max_n, device)
    return bn, bd, warps, stages, S, (P * _cdiv(D, bd), S), _cdiv(max(max_n, 1), S), _block_k(K), _dot_prec(dtype)


@functools.lru_cache(maxsize=512)
def _bwd_plan(P: int, K: int, D: int, max_n: int, device: torch.device, dtype: torch.dtype, n_split, tiles):
    """(S, N_PER_SPLIT, BLOCK_K, DOT_PREC, scores tile, scores grid, dq tile, dq grid) of fold_bwd."""
    S = n_split if n_split is not None else _n_split(P, max_n, device)
    t_s = _tile(tiles, D, device, "scores")
    t_q = _tile(tiles, D, device, "dq")
    return S, _cdiv(max(max_n, 1), S), _block_k(K), _dot_prec(dtype), t_s, (P, S), t_q, (P, _cdiv(D, t_q[1]))


@functools.lru_cache(maxsize=512)
def _dx_plan(P: int, D: int, max_n: int, device: torch.device, dtype: torch.dtype, tiles):
    """(BLOCK_N, BLOCK_D, num_warps, num_stages, N_TILES, grid, DOT_PREC) of fold_dx."""
    bn, bd, warps, stages = _tile(tiles, D, device, "dx")
    n_tiles = _cdiv(max(max_n, 1), bn)
    return bn, bd, warps, stages, n_tiles, (P * n_tiles, _cdiv(D, bd)), _dot_prec(dtype)


def fold_fwd(qc, x, mask, cu_seqlens, max_seqlen, *, scale: float, eps: float, return_attn: bool = False,
             n_split=None, tiles=None):
    """Forward of the folded step. ``qc [P, K, D + 1]``: the slot queries q' in columns ``:D`` and the
    per-slot logit bias c in column D (last dim contiguous; other strides free). Returns
    ``(out [P, K, D + 1] in x's dtype — u' and, in column D, the weight sum Σ_n W —, den fp32 [P, K],
    attn [P, 1, K, N] / [1, K, T] or None)``. ``n_split`` / ``tiles`` ((BLOCK_N, BLOCK_D, num_warps[, num_stages]))
    override the launcher's choice (the tests reach the GPU's N-split and D-chunk paths with them)."""
    P, K, D = qc.shape[0], qc.shape[1], qc.shape[2] - 1
    N, max_n, s_xp, s_xn = _seq(x, cu_seqlens, max_seqlen)
    bn, bd, warps, stages, S, grid, n_per_split, BK, prec = _fwd_plan(
        P, K, D, max_n, x.device, x.dtype, n_split, _key_tiles(tiles))
    out = torch.empty((P, K, D + 1), device=x.device, dtype=x.dtype)
    den = torch.empty((P, K), device=x.device, dtype=torch.float32)
    attn = None
    if return_attn:
        attn = torch.zeros((P, 1, K, x.shape[1]) if cu_seqlens is None else (1, K, x.shape[0]), device=x.device, dtype=x.dtype)
    s_a = (0, 0) if attn is None else ((attn.stride(0), attn.stride(2)) if cu_seqlens is None else (0, attn.stride(1)))
    ws_acc = ws_den = None
    if S > 1:
        ws_acc = torch.empty((S, P, K, D), device=x.device, dtype=torch.float32)
        ws_den = torch.empty((S, P, K), device=x.device, dtype=torch.float32)
    mask = None if mask is None else mask.view(torch.uint8)
    if P > 0:
        _fold_fwd_kernel[grid](
            x, qc, qc[..., D], mask, cu_seqlens, out, den, attn, ws_acc, ws_den,
            scale=float(scale), eps=float(eps), floor=DENOM_FLOOR, N=N, N_PER_SPLIT=n_per_split,
            s_xp=s_xp, s_xn=s_xn, s_qp=qc.stride(0), s_qk=qc.stride(1),
            s_mp=mask.stride(0) if mask is not None else 0, s_op=out.stride(0), s_ok=out.stride(1),
            s_ap=s_a[0], s_ak=s_a[1],
            K=K, D=D, BLOCK_K=BK, BLOCK_N=bn, BLOCK_D=bd, DOT_PREC=prec, num_warps=warps,
            num_stages=stages,
        )
    if S > 1:
        den = ws_den.sum(0)
        dc = den.clamp_min(DENOM_FLOOR)
        out[..., :D] = ws_acc.sum(0) / dc[..., None]
        out[..., D] = den / dc
    return out, den, attn


def fold_bwd(qc, x, mask, cu_seqlens, max_seqlen, den, dout, dattn, *, scale: float, eps: float, n_split=None,
             tiles=None):
    """One iteration's backward without the input gradient.

    qc ``[P, K, D + 1]`` as in :func:`fold_fwd`; dout ``[P, K, D + 1]`` the gradient of its output
    (column D, the weight sum, is piecewise constant: its gradient is ignored); den fp32 ``[P, K]``;
    dattn ``[P, 1, K, N]`` / ``[1, K, T]`` or None. Returns ``(dqc [P, K, D + 1] in qc's dtype —
    dq' and, in column D, dc —, tok_s, tok_q)``.
    """
    P, K, D = qc.shape[0], qc.shape[1], qc.shape[2] - 1
    N, max_n, s_xp, s_xn = _seq(x, cu_seqlens, max_seqlen)
    S, n_per_split, BK, prec, t_s, grid_s, t_q, grid_q = _bwd_plan(
        P, K, D, max_n, x.device, x.dtype, n_split, _key_tiles(tiles))
    shape_s, shape_q = token_shapes(x, cu_seqlens, P, K)
    sd = torch.empty(shape_s, device=x.device, dtype=torch.float32)
    tok_s = (torch.zeros if cu_seqlens is not None else torch.empty)(shape_s, device=x.device, dtype=x.dtype)
    ws_g = torch.empty((S, P, BK), device=x.device, dtype=torch.float32)
    dqc = torch.empty((P, K, D + 1), device=x.device, dtype=qc.dtype)
    tok_q = torch.empty(shape_q, device=x.device, dtype=x.dtype)
    mask = None if mask is None else mask.view(torch.uint8)
    common = dict(mask=mask, cu_seqlens=cu_seqlens, scale=float(scale), eps=float(eps), floor=DENOM_FLOOR,
                  s_xp=s_xp, s_xn=s_xn, s_mp=mask.stride(0) if mask is not None else 0,
                  K=K, D=D, BLOCK_K=BK, DOT_PREC=prec)
    bn, bd, warps, stages = t_s
    if P > 0:
        _fold_scores_bwd_kernel[grid_s](
            x, qc, dout, bias=qc[..., D], den=den, sd=sd, ws_g=ws_g, N=N, N_PER_SPLIT=n_per_split,
            s_qp=qc.stride(0), s_qk=qc.stride(1), s_dup=dout.stride(0), s_duk=dout.stride(1),
            BLOCK_N=bn, BLOCK_D=bd, num_warps=warps, num_stages=stages, **common
        )
    g = ws_g[0] if S == 1 else ws_g.sum(0)
    s_a = (0, 0) if dattn is None else ((dattn.stride(0), dattn.stride(2)) if cu_seqlens is None else (0, dattn.stride(1)))
    bn, bd, warps, stages = t_q
    if P > 0:
        _fold_dq_bwd_kernel[grid_q](
            x, qc, dout, sd, g, den, dattn, dq=dqc, dbias=dqc[..., D], tok_s=tok_s, tok_q=tok_q, N=N,
            MAX_N=max(max_n, 1), s_ap=s_a[0], s_ak=s_a[1], s_dqp=dqc.stride(0), s_dqk=dqc.stride(1),
            s_qp=qc.stride(0), s_qk=qc.stride(1), s_dup=dout.stride(0), s_duk=dout.stride(1),
            BLOCK_N=bn, BLOCK_D=bd, num_warps=warps, num_stages=stages, **common
        )
    return dqc, tok_s, tok_q


def fold_dx(tok_s: torch.Tensor, tok_q: torch.Tensor, x: torch.Tensor, cu_seqlens, max_seqlen, tiles=None) -> torch.Tensor:
    """The input gradient of all iterations at once from their stacked tokens
    (``tok_s [I, rows, 2, BLOCK_K]``, ``tok_q [I, P, 2, K, D]``): ``dx`` shaped like x, written once."""
    I, P, _, K, D = tok_q.shape
    N, max_n, s_xp, s_xn = _seq(x, cu_seqlens, max_seqlen)
    bn, bd, warps, stages, n_tiles, grid, prec = _dx_plan(P, D, max_n, x.device, x.dtype, _key_tiles(tiles))
    dx = torch.zeros_like(x) if cu_seqlens is not None else torch.empty_like(x)
    if P > 0 and I > 0:
        _fold_dx_kernel[grid](
            tok_s, tok_q, cu_seqlens, dx, N=N, ITERS=I, N_TILES=n_tiles,
            s_si=tok_s.stride(0), s_qi=tok_q.stride(0), s_xp=s_xp, s_xn=s_xn,
            K=K, D=D, BLOCK_K=tok_s.shape[-1], BLOCK_N=bn, BLOCK_D=bd, DOT_PREC=prec, num_warps=warps,
            num_stages=stages,
        )
    elif I == 0:
        dx.zero_()
    return dx


def _nbytes(t) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def _rows(a) -> int:
    return a["x"].numel() // a["D"]


def _traffic_fwd(grid, a):
    """x streamed once from HBM per problem (the D-chunk programs of a problem are neighbours and
    share it through L2); every D-chunk program recomputes the logits (FLOPs, not bytes)."""
    rows, D, BK, e = _rows(a), a["D"], a["BLOCK_K"], a["x"].element_size()
    num_d = -(-D // a["BLOCK_D"])
    P = grid[0] // num_d
    read = rows * D * e + P * a["K"] * (D + 1) * a["q"].element_size() + _nbytes(a.get("mask"))
    written = _nbytes(a["out"]) + _nbytes(a["den"]) + _nbytes(a.get("attn")) + _nbytes(a.get("ws_acc")) + _nbytes(a.get("ws_den"))
    return read, written, 2 * rows * D * BK * (num_d + 1)


def _traffic_scores(grid, a):
    rows, D, BK, e = _rows(a), a["D"], a["BLOCK_K"], a["x"].element_size()
    P, K = grid[0], a["K"]
    read = rows * D * e + 2 * P * K * D * e + P * K * 4 + _nbytes(a.get("mask"))
    written = _nbytes(a["sd"]) + _nbytes(a["ws_g"])
    return read, written, 4 * rows * D * BK


def _traffic_dq(grid, a):
    """x once; the small score tensor sd once per D-chunk program."""
    rows, D, BK, e = _rows(a), a["D"], a["BLOCK_K"], a["x"].element_size()
    P, K, num_d = grid[0], a["K"], grid[1]
    read = rows * D * e + num_d * _nbytes(a["sd"]) + 2 * P * K * D * e + _nbytes(a.get("dattn")) + _nbytes(a.get("mask"))
    written = P * K * (D + 1) * e + _nbytes(a["tok_s"]) + _nbytes(a["tok_q"])
    return read, written, 2 * rows * D * BK


def _traffic_dx(grid, a):
    D, BK = a["D"], a["BLOCK_K"]
    rows = a["dx"].numel() // D
    num_d = grid[1]
    read = num_d * _nbytes(a["tok_s"]) + _nbytes(a["tok_q"])
    return read, _nbytes(a["dx"]), 4 * rows * D * BK * a["ITERS"]


# HBM traffic per launch: kernel name -> fn(grid, args) -> (bytes read, bytes written, FLOPs).
# FLOPs count the padded MMA work (BLOCK_K columns), i.e. what the tensor cores execute.
TRAFFIC = {
    "_fold_fwd_kernel": _traffic_fwd,
    "_fold_scores_bwd_kernel": _traffic_scores,
    "_fold_dq_bwd_kernel": _traffic_dq,
    "_fold_dx_kernel": _traffic_dx,
}
