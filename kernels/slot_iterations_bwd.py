"""Backward of the whole-iteration kernel (kernels/slot_iterations.py): every iteration in one launch.

Recompute-based. The forward (``SAVE=True``) keeps, per iteration, the slots entering it
``[iters + 1, B, K, D]``, the weighted mean of the normalised inputs ``ubar`` ``[iters, B, K, D]``
and its denominator ``den`` ``[iters, B, K]`` — never the ``[B, K, N]`` attention. One program per
batch element ``b`` then runs, for the differentiated iterations in reverse (all of them, or the
last one under ``implicit_grad``)::

    recompute the slot side from s_it, ubar_it, den_it (LayerNorm, q, q Wk, u, GRU gates, MLP)
    backward through the MLP, LN_ff, GRU, v projection   -> d ubar, d den  (d u)
    one pass over N: recompute logits, softmax, and      -> d(q Wk), d(q·bk)  (the logit gradient
                                                            against the normalised inputs)
    backward through the k fold, q projection, LN_slots  -> the gradient of s_it

and then one more pass over N that recomputes each differentiated iteration's attention from the
small per-iteration terms it kept in a scratch buffer and sums the gradient of the normalised
inputs over the iterations, so the input LayerNorm's backward runs once and ``dx`` is written
once. Weight gradients of every parameter (and of the slot init) are summed over iterations and
slots in a per-program fp32 row of ``part`` ``[B, P]`` (each program owns its row: deterministic,
no atomics); the launcher sums the rows (one aten op) and casts once.

Layout of a row (offsets in :func:`row_layout`): the three LayerNorms (weight, bias), q, k, v
(weight, bias), GRU (w_ih, b_ih, w_hh, b_hh), MLP (w1, b1, w2, b2), then the init's gradient.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .slot_attention import DENOM_FLOOR, _next_pow2
from .slot_iterations import _vec

_FLOOR = tl.constexpr(DENOM_FLOOR)

#: INIT_GRAD codes: what the gradient of the starting slots feeds
GRAD_NONE, GRAD_SLOTS, GRAD_GAUSSIAN, GRAD_TABLE, GRAD_MEAN = 0, 1, 2, 3, 4


def row_layout(d: int, hid: int, k: int, init_grad: int) -> dict:
    """``{name: (offset, numel)}`` of one row of the partial-gradient buffer, and ``"_total"``."""
    sizes = [("ln_in_w", d), ("ln_in_b", d), ("ln_s_w", d), ("ln_s_b", d), ("ln_f_w", d), ("ln_f_b", d),
             ("wq", d * d), ("bq", d), ("wk", d * d), ("bk", d), ("wv", d * d), ("bv", d),
             ("w_ih", 3 * d * d), ("b_ih", 3 * d), ("w_hh", 3 * d * d), ("b_hh", 3 * d),
             ("w1", hid * d), ("b1", hid), ("w2", d * hid), ("b2", d)]
    sizes.append(("init", {GRAD_GAUSSIAN: 2 * d, GRAD_TABLE: k * d, GRAD_MEAN: d}.get(init_grad, 0)))
    out, off = {}, 0
    for name, n in sizes:
        out[name] = (off, n)
        off += n
    out["_total"] = off
    return out


@triton.jit
def _ln_stats(t, m_col, D: tl.constexpr, EPS):
    """(x̂, rstd) of a LayerNorm over the last axis of ``t`` ``[R, BLOCK_D]`` (x̂ is 0 in padding columns)."""
    mean = tl.sum(t, axis=1) / D
    diff = tl.where(m_col[None, :], t - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=1) / D + EPS)
    return diff * rstd[:, None], rstd


@triton.jit
def _ln_bwd(xhat, rstd, dy, w, m_col, D: tl.constexpr):
    """The gradient of a LayerNorm's input from that of its output ``dy`` (weight ``w``)."""
    dxh = dy * w[None, :]
    c1 = tl.sum(dxh, axis=1) / D
    c2 = tl.sum(dxh * xhat, axis=1) / D
    return tl.where(m_col[None, :], (dxh - c1[:, None] - xhat * c2[:, None]) * rstd[:, None], 0.0)


@triton.jit
def _acc2(ptr, o_r, o_c, m_r, m_c, LD: tl.constexpr, val, keep):
    """``ptr[o_r, o_c] (+)= val`` (row-major, ``LD`` columns); ``keep`` False: overwrite."""
    p = ptr + o_r[:, None] * LD + o_c[None, :]
    m = m_r[:, None] & m_c[None, :]
    old = tl.load(p, mask=m & keep, other=0.0)
    tl.store(p, old + val, mask=m)


@triton.jit
def _acc1(ptr, o, m, val, keep):
    old = tl.load(ptr + o, mask=m & keep, other=0.0)
    tl.store(ptr + o, old + val, mask=m)


@triton.jit
def _tile(ptr, row0, o_r, o_c, m_r, m_c, LD: tl.constexpr):
    """``W[row0 + o_r, o_c]`` of a row-major ``W`` with ``LD`` columns, as stored (fp32)."""
    return tl.load(ptr + (row0 + o_r[:, None]) * LD + o_c[None, :], mask=m_r[:, None] & m_c[None, :], other=0.0).to(tl.float32)


@triton.jit
def _slot_iterations_bwd(
    x, mask, save_s, save_u, save_den, dout, noise, init_logsigma, dx, ds0, part,
    sc_qk, sc_c, sc_da, sc_dd,
    ln_in_w, ln_in_b, ln_s_w, ln_s_b, ln_f_w, ln_f_b,
    wq, bq, wk, bk, wv, bv, w_ih, b_ih, w_hh, b_hh, w1, b1, w2, b2,
    N, s_xb, s_xn, s_mb, scale, eps, ln_eps_in, ln_eps_s, ln_eps_f,
    K: tl.constexpr, D: tl.constexpr, HID: tl.constexpr, ITERS: tl.constexpr, NBWD: tl.constexpr,
    HAS_MASK: tl.constexpr, INIT_GRAD: tl.constexpr, NEED_DX: tl.constexpr, P_ROW: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    i_B = tl.num_programs(0)
    o_k = tl.arange(0, BLOCK_K)
    o_d = tl.arange(0, BLOCK_D)
    o_h = tl.arange(0, BLOCK_H)
    m_k = o_k < K
    m_d = o_d < D
    m_h = o_h < HID
    m_kd = m_k[:, None] & m_d[None, :]
    kd = o_k[:, None] * D + o_d[None, :]
    kd_pad = o_k[:, None] * BLOCK_D + o_d[None, :]
    # offsets of this program's row of the partial gradients (row_layout)
    O_WQ: tl.constexpr = 6 * D
    O_BQ: tl.constexpr = O_WQ + D * D
    O_WK: tl.constexpr = O_BQ + D
    O_BK: tl.constexpr = O_WK + D * D
    O_WV: tl.constexpr = O_BK + D
    O_BV: tl.constexpr = O_WV + D * D
    O_WIH: tl.constexpr = O_BV + D
    O_BIH: tl.constexpr = O_WIH + 3 * D * D
    O_WHH: tl.constexpr = O_BIH + 3 * D
    O_BHH: tl.constexpr = O_WHH + 3 * D * D
    O_W1: tl.constexpr = O_BHH + 3 * D
    O_B1: tl.constexpr = O_W1 + HID * D
    O_W2: tl.constexpr = O_B1 + HID
    O_B2: tl.constexpr = O_W2 + D * HID
    O_INIT: tl.constexpr = O_B2 + D
    gp = part + i_b * P_ROW

    w_in, b_in = _vec(ln_in_w, 0, o_d, m_d), _vec(ln_in_b, 0, o_d, m_d)
    w_s, b_s = _vec(ln_s_w, 0, o_d, m_d), _vec(ln_s_b, 0, o_d, m_d)
    w_f, b_f = _vec(ln_f_w, 0, o_d, m_d), _vec(ln_f_b, 0, o_d, m_d)
    x_b = x + i_b * s_xb
    g = tl.load(dout + i_b * K * D + kd, mask=m_kd, other=0.0).to(tl.float32)
    for j in range(NBWD):
        it = ITERS - 1 - j
        keep = j > 0  # the first differentiated iteration writes the row, the others add to it
        base = it * i_B + i_b
        s = tl.load(save_s + base * K * D + kd, mask=m_kd, other=0.0)
        ub = tl.load(save_u + base * K * D + kd, mask=m_kd, other=0.0)
        den = tl.load(save_den + base * K + o_k, mask=m_k, other=0.0)
        inv = 1.0 / tl.maximum(den, _FLOOR)
        rho = den * inv
        # ---- the slot side of the forward, recomputed
        shat, rs = _ln_stats(s, m_d, D, ln_eps_s)
        sn = shat * w_s[None, :] + b_s[None, :]
        q = tl.dot(sn, tl.trans(_tile(wq, 0, o_d, o_d, m_d, m_d, D)), input_precision=DOT_PREC) + _vec(bq, 0, o_d, m_d)[None, :]
        wk_t = _tile(wk, 0, o_d, o_d, m_d, m_d, D)  # [OUT, IN]
        bk_v = _vec(bk, 0, o_d, m_d)
        qk = tl.dot(q, wk_t, input_precision=DOT_PREC) * scale
        c = tl.where(m_k, tl.sum(q * bk_v[None, :], axis=1) * scale, float("-inf"))
        wv_t = _tile(wv, 0, o_d, o_d, m_d, m_d, D)
        bv_v = _vec(bv, 0, o_d, m_d)
        u = tl.dot(ub, tl.trans(wv_t), input_precision=DOT_PREC) + rho[:, None] * bv_v[None, :]
        wir = _tile(w_ih, 0, o_d, o_d, m_d, m_d, D)
        wiz = _tile(w_ih, D, o_d, o_d, m_d, m_d, D)
        win = _tile(w_ih, 2 * D, o_d, o_d, m_d, m_d, D)
        whr = _tile(w_hh, 0, o_d, o_d, m_d, m_d, D)
        whz = _tile(w_hh, D, o_d, o_d, m_d, m_d, D)
        whn = _tile(w_hh, 2 * D, o_d, o_d, m_d, m_d, D)
        g_r = tl.dot(u, tl.trans(wir), input_precision=DOT_PREC) + _vec(b_ih, 0, o_d, m_d)[None, :]
        g_z = tl.dot(u, tl.trans(wiz), input_precision=DOT_PREC) + _vec(b_ih, D, o_d, m_d)[None, :]
        g_n = tl.dot(u, tl.trans(win), input_precision=DOT_PREC) + _vec(b_ih, 2 * D, o_d, m_d)[None, :]
        h_r = tl.dot(s, tl.trans(whr), input_precision=DOT_PREC) + _vec(b_hh, 0, o_d, m_d)[None, :]
        h_z = tl.dot(s, tl.trans(whz), input_precision=DOT_PREC) + _vec(b_hh, D, o_d, m_d)[None, :]
        h_n = tl.dot(s, tl.trans(whn), input_precision=DOT_PREC) + _vec(b_hh, 2 * D, o_d, m_d)[None, :]
        r = tl.sigmoid(g_r + h_r)
        z = tl.sigmoid(g_z + h_z)
        ng = 2.0 * tl.sigmoid(2.0 * (g_n + r * h_n)) - 1.0
        h = (1.0 - z) * ng + z * s
        fhat, rf = _ln_stats(h, m_d, D, ln_eps_f)
        f = fhat * w_f[None, :] + b_f[None, :]
        w1_t = _tile(w1, 0, o_h, o_d, m_h, m_d, D)  # [HID, D]
        hpre = tl.dot(f, tl.trans(w1_t), input_precision=DOT_PREC) + _vec(b1, 0, o_h, m_h)[None, :]
        hid = tl.maximum(hpre, 0.0)
        # ---- residual MLP and LN_ff
        g = tl.where(m_kd, g, 0.0)
        _acc2(gp + O_W2, o_d, o_h, m_d, m_h, HID, tl.dot(tl.trans(g), hid, input_precision=DOT_PREC), keep)
        _acc1(gp + O_B2, o_d, m_d, tl.sum(g, axis=0), keep)
        dhid = tl.dot(g, _tile(w2, 0, o_d, o_h, m_d, m_h, HID), input_precision=DOT_PREC)
        dhid = tl.where(hpre > 0, dhid, 0.0)
        _acc2(gp + O_W1, o_h, o_d, m_h, m_d, D, tl.dot(tl.trans(dhid), f, input_precision=DOT_PREC), keep)
        _acc1(gp + O_B1, o_h, m_h, tl.sum(dhid, axis=0), keep)
        df = tl.dot(dhid, w1_t, input_precision=DOT_PREC)
        _acc1(gp + 4 * D, o_d, m_d, tl.sum(df * fhat, axis=0), keep)
        _acc1(gp + 5 * D, o_d, m_d, tl.sum(df, axis=0), keep)
        dh = tl.where(m_kd, g + _ln_bwd(fhat, rf, df, w_f, m_d, D), 0.0)
        # ---- GRU cell
        dz = dh * (s - ng)
        ds = dh * z
        dnp = dh * (1.0 - z) * (1.0 - ng * ng)
        drp = dnp * h_n * r * (1.0 - r)
        dzp = dz * z * (1.0 - z)
        dhn = dnp * r
        _acc2(gp + O_WIH, o_d, o_d, m_d, m_d, D, tl.dot(tl.trans(drp), u, input_precision=DOT_PREC), keep)
        _acc2(gp + O_WIH + D * D, o_d, o_d, m_d, m_d, D, tl.dot(tl.trans(dzp), u, input_precision=DOT_PREC), keep)
        _acc2(gp + O_WIH + 2 * D * D, o_d, o_d, m_d, m_d, D, tl.dot(tl.trans(dnp), u, input_precision=DOT_PREC), keep)
        _acc1(gp + O_BIH, o_d, m_d, tl.sum(drp, axis=0), keep)
        _acc1(gp + O_BIH + D, o_d, m_d, tl.sum(dzp, axis=0), keep)
        _acc1(gp + O_BIH + 2 * D, o_d, m_d, tl.sum(dnp, axis=0), keep)
        _acc2(gp + O_WHH, o_d, o_d, m_d, m_d, D, tl.dot(tl.trans(drp), s, input_precision=DOT_PREC), keep)
        _acc2(gp + O_WHH + D * D, o_d, o_d, m_d, m_d, D, tl.dot(tl.trans(dzp), s, input_precision=DOT_PREC), keep)
        _acc2(gp + O_WHH + 2 * D * D, o_d, o_d, m_d, m_d, D, tl.dot(tl.trans(dhn), s, input_precision=DOT_PREC), keep)
        _acc1(gp + O_BHH, o_d, m_d, tl.sum(drp, axis=0), keep)
        _acc1(gp + O_BHH + D, o_d, m_d, tl.sum(dzp, axis=0), keep)
        _acc1(gp + O_BHH + 2 * D, o_d, m_d, tl.sum(dhn, axis=0), keep)
        du = (tl.dot(drp, wir, input_precision=DOT_PREC) + tl.dot(dzp, wiz, input_precision=DOT_PREC)
              + tl.dot(dnp, win, input_precision=DOT_PREC))
        ds += (tl.dot(drp, whr, input_precision=DOT_PREC) + tl.dot(dzp, whz, input_precision=DOT_PREC)
               + tl.dot(dhn, whn, input_precision=DOT_PREC))
        # ---- v projection (folded: u = ubar Wvᵀ + bv·den/max(den, floor))
        _acc2(gp + O_WV, o_d, o_d, m_d, m_d, D, tl.dot(tl.trans(du), ub, input_precision=DOT_PREC), keep)
        _acc1(gp + O_BV, o_d, m_d, tl.sum(du * rho[:, None], axis=0), keep)
        dub = tl.dot(du, wv_t, input_precision=DOT_PREC)
        dacc = dub * inv[:, None]
        dden = tl.where(den >= _FLOOR, -tl.sum(dub * ub, axis=1) * inv, tl.sum(du * bv_v[None, :], axis=1) / _FLOOR)
        dden = tl.where(m_k, dden, 0.0)
        # kept for the input-gradient pass
        sc = (j * i_B + i_b) * BLOCK_K
        tl.store(sc_qk + sc * BLOCK_D + kd_pad, qk)
        tl.store(sc_da + sc * BLOCK_D + kd_pad, dacc)
        tl.store(sc_c + sc + o_k, c)
        tl.store(sc_dd + sc + o_k, dden)
        # ---- one pass over N: the logit gradient against the normalised inputs
        dqk = tl.zeros([BLOCK_K, BLOCK_D], dtype=tl.float32)
        dc = tl.zeros([BLOCK_K], dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            o_n = n0 + tl.arange(0, BLOCK_N)
            m_n = o_n < N
            t = tl.load(x_b + o_n[:, None] * s_xn + o_d[None, :], mask=m_n[:, None] & m_d[None, :], other=0.0).to(tl.float32)
            xhat, _r = _ln_stats(t, m_d, D, ln_eps_in)
            xn = xhat * w_in[None, :] + b_in[None, :]
            logit = tl.dot(qk, tl.trans(xn), input_precision=DOT_PREC) + c[:, None]
            e = tl.exp(logit - tl.max(logit, axis=0)[None, :])
            a = e / tl.sum(e, axis=0)[None, :]
            valid = m_n
            if HAS_MASK:
                valid = valid & (tl.load(mask + i_b * s_mb + o_n, mask=m_n, other=0) != 0)
            da = tl.where(m_k[:, None] & valid[None, :],
                          tl.dot(dacc, tl.trans(xn), input_precision=DOT_PREC) + dden[:, None], 0.0)
            dl = a * (da - tl.sum(a * da, axis=0)[None, :])
            dqk += tl.dot(dl, xn, input_precision=DOT_PREC)
            dc += tl.sum(dl, axis=1)
        # ---- k fold (qk = scale q Wk, c = scale q·bk), q projection, LN_slots
        _acc2(gp + O_WK, o_d, o_d, m_d, m_d, D, tl.dot(tl.trans(q), dqk, input_precision=DOT_PREC) * scale, keep)
        _acc1(gp + O_BK, o_d, m_d, tl.sum(q * dc[:, None], axis=0) * scale, keep)
        dq = (tl.dot(dqk, tl.trans(wk_t), input_precision=DOT_PREC) + dc[:, None] * bk_v[None, :]) * scale
        dq = tl.where(m_kd, dq, 0.0)
        _acc2(gp + O_WQ, o_d, o_d, m_d, m_d, D, tl.dot(tl.trans(dq), sn, input_precision=DOT_PREC), keep)
        _acc1(gp + O_BQ, o_d, m_d, tl.sum(dq, axis=0), keep)
        dsn = tl.dot(dq, _tile(wq, 0, o_d, o_d, m_d, m_d, D), input_precision=DOT_PREC)
        _acc1(gp + 2 * D, o_d, m_d, tl.sum(dsn * shat, axis=0), keep)
        _acc1(gp + 3 * D, o_d, m_d, tl.sum(dsn, axis=0), keep)
        g = tl.where(m_kd, ds + _ln_bwd(shat, rs, dsn, w_s, m_d, D), 0.0)
    # ---- the starting slots' gradient g
    if INIT_GRAD == 1:
        tl.store(ds0 + i_b * K * D + kd, g.to(ds0.dtype.element_ty), mask=m_kd)
    elif INIT_GRAD == 2:  # s0 = mu + exp(logsigma) * noise
        nz = tl.load(noise + i_b * K * D + kd, mask=m_kd, other=0.0).to(tl.float32)
        _acc1(gp + O_INIT, o_d, m_d, tl.sum(g, axis=0), False)
        sig = tl.exp(_vec(init_logsigma, 0, o_d, m_d))
        _acc1(gp + O_INIT + D, o_d, m_d, tl.sum(g * nz, axis=0) * sig, False)
    elif INIT_GRAD == 3:
        _acc2(gp + O_INIT, o_k, o_d, m_k, m_d, D, g, False)
    elif INIT_GRAD == 4:
        _acc1(gp + O_INIT, o_d, m_d, tl.sum(g, axis=0), False)
    tl.debug_barrier()  # the scratch rows written above are read by other threads of the program
    # ---- one pass over N: the normalised inputs' gradient summed over iterations, LN_in backward
    dgw = tl.zeros([BLOCK_D], dtype=tl.float32)
    dgb = tl.zeros([BLOCK_D], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        o_n = n0 + tl.arange(0, BLOCK_N)
        m_n = o_n < N
        m_nd = m_n[:, None] & m_d[None, :]
        t = tl.load(x_b + o_n[:, None] * s_xn + o_d[None, :], mask=m_nd, other=0.0).to(tl.float32)
        xhat, rx = _ln_stats(t, m_d, D, ln_eps_in)
        xn = xhat * w_in[None, :] + b_in[None, :]
        valid = m_n
        if HAS_MASK:
            valid = valid & (tl.load(mask + i_b * s_mb + o_n, mask=m_n, other=0) != 0)
        m_kn = m_k[:, None] & valid[None, :]
        dxn = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        for j in range(NBWD):
            sc = (j * i_B + i_b) * BLOCK_K
            qk = tl.load(sc_qk + sc * BLOCK_D + kd_pad)
            dacc = tl.load(sc_da + sc * BLOCK_D + kd_pad)
            c = tl.load(sc_c + sc + o_k)
            dden = tl.load(sc_dd + sc + o_k)
            logit = tl.dot(qk, tl.trans(xn), input_precision=DOT_PREC) + c[:, None]
            e = tl.exp(logit - tl.max(logit, axis=0)[None, :])
            a = e / tl.sum(e, axis=0)[None, :]
            w = tl.where(m_kn, a + eps, 0.0)
            da = tl.where(m_kn, tl.dot(dacc, tl.trans(xn), input_precision=DOT_PREC) + dden[:, None], 0.0)
            dl = a * (da - tl.sum(a * da, axis=0)[None, :])
            dxn += tl.dot(tl.trans(dl), qk, input_precision=DOT_PREC) + tl.dot(tl.trans(w), dacc, input_precision=DOT_PREC)
        dxn = tl.where(m_nd, dxn, 0.0)
        dgw += tl.sum(dxn * xhat, axis=0)
        dgb += tl.sum(dxn, axis=0)
        if NEED_DX:
            dxt = _ln_bwd(xhat, rx, dxn, w_in, m_d, D)
            tl.store(dx + i_b * N * D + o_n[:, None] * D + o_d[None, :], dxt.to(dx.dtype.element_ty), mask=m_nd)
    _acc1(gp, o_d, m_d, dgw, False)
    _acc1(gp + D, o_d, m_d, dgb, False)


def slot_iterations_bwd(x, mask, saved, dout, params: dict, *, iters: int, n_bwd: int, scale: float, eps: float,
                        init_grad: int, noise=None, logsigma=None, need_dx: bool = True, block_n: int = 64,
                        num_warps: int | None = None):
    """Gradients of :func:`slot_iterations` (``save=`` buffers from its forward) in one launch.

    Args:
        x: ``[B, N, D]`` raw inputs, mask ``[B, N]`` bool or None, as in the forward.
        saved: ``(slots [iters + 1, B, K, D], ubar [iters, B, K, D], den [iters, B, K])`` fp32.
        dout: ``[B, K, D]`` gradient of the result.
        n_bwd: how many of the last iterations are differentiated (``iters``: the full unrolled
            backward; 1: ``implicit_grad``).
        init_grad: GRAD_* code: where the gradient of the slots entering the first differentiated
            iteration goes (``GRAD_NONE`` when it is detached).
    Returns:
        ``(dx [B, N, D] in x's dtype or None, ds0 [B, K, D] fp32 or None, grads: {name: fp32 tensor}``
        (flat per :func:`row_layout`, summed over the batch; ``"init"`` is the init's gradient).
    """
    b, n, d = x.shape
    k = dout.shape[1]
    hid = params["mlp1"][0].shape[0]
    if x.stride(-1) != 1 or x.stride(1) != d:
        x = x.contiguous()
    dout = dout.contiguous()
    lay = row_layout(d, hid, k, init_grad)
    bk_, bd = max(16, _next_pow2(k)), max(16, _next_pow2(d))
    dev = x.device
    part = torch.empty((b, lay["_total"]), device=dev, dtype=torch.float32)
    # one allocation for the four scratch arrays (qk, dacc [n_bwd, B, BK, BD]; c, dden [n_bwd, B, BK])
    scratch = torch.empty(2 * n_bwd * b * bk_ * (bd + 1), device=dev, dtype=torch.float32)
    big = n_bwd * b * bk_ * bd
    sc_qk, sc_da = scratch[:big], scratch[big:2 * big]
    sc_c, sc_dd = scratch[2 * big:2 * big + n_bwd * b * bk_], scratch[2 * big + n_bwd * b * bk_:]
    dx = torch.empty((b, n, d), device=dev, dtype=x.dtype) if need_dx else None
    ds0 = torch.empty((b, k, d), device=dev, dtype=torch.float32) if init_grad == GRAD_SLOTS else None
    m = None if mask is None else mask.view(torch.uint8)
    (w_in, b_in, e_in), (w_s, b_s, e_s), (w_f, b_f, e_f) = params["ln_in"], params["ln_s"], params["ln_f"]
    w_ih, w_hh, b_ih, b_hh = params["gru"]
    dot_prec = "ieee" if x.dtype == torch.float32 else "tf32"
    s_s, s_u, s_den = saved
    _slot_iterations_bwd[(b,)](
        x, m if m is not None else x, s_s, s_u, s_den, dout, noise if noise is not None else x,
        logsigma if logsigma is not None else x, dx if dx is not None else x, ds0 if ds0 is not None else x, part,
        sc_qk, sc_c, sc_da, sc_dd,
        w_in, b_in, w_s, b_s, w_f, b_f,
        *params["q"], *params["k"], *params["v"], w_ih, b_ih, w_hh, b_hh, *params["mlp1"], *params["mlp2"],
        n, x.stride(0), x.stride(1), 0 if m is None else m.stride(0), float(scale), float(eps),
        float(e_in), float(e_s), float(e_f),
        K=k, D=d, HID=hid, ITERS=iters, NBWD=n_bwd, HAS_MASK=m is not None, INIT_GRAD=init_grad, NEED_DX=need_dx,
        P_ROW=lay["_total"], BLOCK_K=bk_, BLOCK_D=bd, BLOCK_H=max(16, _next_pow2(hid)), BLOCK_N=block_n,
        DOT_PREC=dot_prec, num_warps=num_warps or 8,
    )
    total = part.sum(0)  # the batch's rows: one reduction for every parameter
    grads = {name: total[v[0]:v[0] + v[1]] for name, v in lay.items() if name != "_total"}
    grads["_flat"] = total
    return dx, ds0, grads


def _nbytes(t) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def _traffic(grid, a):
    """Per launch: x (and the mask) streamed once per differentiated iteration and once more for
    the input gradient, dx written once, the saved slots/means read once, the weights once (L2
    serves the other programs), each program's gradient row read and written once per
    differentiated iteration (it is L2-resident in practice: an upper bound). FLOPs count the
    padded MMA tiles: per iteration 3 N-tile products in the pass (logits, d attn, dqk), 4 in the
    input-gradient pass (logits, d attn, two for dxn), and the slot side's ~30 [BK, BD, BD] ones."""
    nb, n, bk, bd, bh = a["NBWD"], a["N"], a["BLOCK_K"], a["BLOCK_D"], a["BLOCK_H"]
    b = grid[0]
    weights = sum(_nbytes(a[k]) for k in ("ln_in_w", "ln_in_b", "ln_s_w", "ln_s_b", "ln_f_w", "ln_f_b", "wq", "bq",
                                          "wk", "bk", "wv", "bv", "w_ih", "b_ih", "w_hh", "b_hh", "w1", "b1", "w2", "b2"))
    x_rows = b * n * a["D"] * a["x"].element_size()
    mask = b * n if a["HAS_MASK"] else 0
    saved = sum(_nbytes(a[k]) for k in ("save_s", "save_u", "save_den", "dout"))
    row = b * int(a["P_ROW"]) * 4
    read = (nb + 1) * (x_rows + mask) + weights + saved + nb * row
    written = (x_rows if a["NEED_DX"] else 0) + nb * row + (_nbytes(a["ds0"]) if a["INIT_GRAD"] == 1 else 0)
    per_iter = 2 * bk * n * bd * (3 + 4) + 2 * bk * bd * bd * 30 + 2 * 6 * bk * bd * bh
    return read, written, b * nb * per_iter


TRAFFIC = {"_slot_iterations_bwd": _traffic}
