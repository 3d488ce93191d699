"""Whole-iteration slot attention for small widths: every refinement iteration in one launch.

At the widths object-centric models use (D <= 128, K <= 16 slots) one iteration of slot attention
is a handful of tiny GEMMs around one pass over the inputs, so the folded path's ~13 launches per
iteration cost more than the work they do. This kernel runs *all* ``iters`` iterations of one
batch element in one program: the slots stay in registers from the first iteration to the last,
the weights are read from L2, and the inputs are streamed once per iteration.

Per program (one batch element ``b``), with ``x = inputs[b]`` ``[N, D]`` and ``s`` ``[K, D]``::

    for it in range(iters):
        sn  = LN_slots(s);  q = sn Wqᵀ + bq                      (q: [K, D])
        q'  = q Wk;  c = q·bk                                    (the k projection folded into q)
        for each tile of N:  xn = LN_in(x_tile)                  (recomputed: cheaper than k, v)
            l   = scale (q' xnᵀ + c)                             ([K, BLOCK_N])
            w   = (softmax over slots (l) + eps) · valid
            den += Σ_n w;  acc += w xn
        u   = (acc / max(den, floor)) Wvᵀ + bv · den / max(den, floor)   (the v projection folded)
        s   = GRU(u, s);  s = s + W2 relu(W1 LN_ff(s) + b1) + b2

which is ``slotvlm.nn.SlotAttention``'s one-head forward (``slot_attention_step_ref`` and
``torch.nn.GRUCell`` written out), in fp32 whatever the input dtype. There is no backward: the
module uses it where no graph is needed (inference, and the iterations before the last under
``implicit_grad=True``); see ``slotvlm.nn.slot_attention.whole_iteration_applies``.

Grid: (B,). Layouts: x ``[B, N, D]`` (last dim contiguous), mask ``[B, N]`` bool (read as uint8) or none,
slots ``[B, K, D]`` contiguous, weights as ``nn.Linear`` / ``nn.GRUCell`` store them (contiguous).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .slot_attention import DENOM_FLOOR, _next_pow2

#: The widths the kernel takes (its weight tiles sit in registers): D <= MAX_D, K <= MAX_K, the MLP's
#: hidden width <= MAX_HIDDEN.
MAX_D, MAX_K, MAX_HIDDEN = 128, 16, 512
_FLOOR = tl.constexpr(DENOM_FLOOR)  # a global a jitted function may read


@triton.jit
def _layer_norm_rows(t, w, b, m_col, D: tl.constexpr, EPS):
    """LayerNorm over the last axis of ``t`` ``[R, BLOCK_D]`` (columns >= D are padding, zero)."""
    mean = tl.sum(t, axis=1) / D
    diff = tl.where(m_col[None, :], t - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=1) / D + EPS)
    return diff * rstd[:, None] * w[None, :] + b[None, :]


@triton.jit
def _weight_t(ptr, row0, o_in, o_out, m_in, m_out, LD: tl.constexpr):
    """The transposed tile ``W[row0 + o_out, o_in]ᵀ`` ``[IN, OUT]`` of a row-major ``W`` with ``LD`` columns."""
    return tl.load(ptr + (row0 + o_out[None, :]) * LD + o_in[:, None], mask=m_in[:, None] & m_out[None, :], other=0.0).to(tl.float32)


@triton.jit
def _vec(ptr, off, o, m):
    return tl.load(ptr + off + o, mask=m, other=0.0).to(tl.float32)


@triton.jit
def _slot_iterations_fwd(
    x, mask, slots_in, init_mu, init_logsigma, out, save_s, save_u, save_den,
    ln_in_w, ln_in_b, ln_s_w, ln_s_b, ln_f_w, ln_f_b,
    wq, bq, wk, bk, wv, bv, w_ih, b_ih, w_hh, b_hh, w1, b1, w2, b2,
    N, s_xb, s_xn, s_mb, s_tk, s_it, scale, eps, ln_eps_in, ln_eps_s, ln_eps_f,
    K: tl.constexpr, D: tl.constexpr, HID: tl.constexpr, ITERS: tl.constexpr, HAS_MASK: tl.constexpr,
    INIT: tl.constexpr, SAVE: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    o_k = tl.arange(0, BLOCK_K)
    o_d = tl.arange(0, BLOCK_D)
    o_h = tl.arange(0, BLOCK_H)
    m_k = o_k < K
    m_d = o_d < D
    m_h = o_h < HID
    m_kd = m_k[:, None] & m_d[None, :]
    if INIT == 0:  # the given starting slots [B, K, D]
        s = tl.load(slots_in + i_b * K * D + o_k[:, None] * D + o_d[None, :], mask=m_kd, other=0.0).to(tl.float32)
    elif INIT == 1:  # gaussian: mu + exp(logsigma) * noise, noise [B, K, D]
        noise = tl.load(slots_in + i_b * K * D + o_k[:, None] * D + o_d[None, :], mask=m_kd, other=0.0).to(tl.float32)
        s = _vec(init_mu, 0, o_d, m_d)[None, :] + tl.exp(_vec(init_logsigma, 0, o_d, m_d))[None, :] * noise
    else:  # a table shared by the batch: row k at init_mu + k * s_tk (s_tk = 0: the mean for every slot)
        s = tl.load(init_mu + o_k[:, None] * s_tk + o_d[None, :], mask=m_kd, other=0.0).to(tl.float32)

    w_in, b_in = _vec(ln_in_w, 0, o_d, m_d), _vec(ln_in_b, 0, o_d, m_d)
    w_s, b_s = _vec(ln_s_w, 0, o_d, m_d), _vec(ln_s_b, 0, o_d, m_d)
    w_f, b_f = _vec(ln_f_w, 0, o_d, m_d), _vec(ln_f_b, 0, o_d, m_d)
    x_b = x + i_b * s_xb
    i_B = tl.num_programs(0)
    kd = o_k[:, None] * D + o_d[None, :]
    for _it in range(ITERS):
        if SAVE:  # the backward (kernels/slot_iterations_bwd.py) recomputes from these: [ITERS + 1, B, K, D]
            tl.store(save_s + (_it * i_B + i_b) * K * D + kd, s, mask=m_kd)
        # s_it is 0 at run time: the weight addresses "depend" on the iteration so that the compiler
        # does not hoist all weight tiles out of the loop into shared memory at once (sm_90 AOT:
        # 223 KB of shared memory at D = 64 without it); each iteration re-reads them from L2
        wo = _it * s_it
        # queries, with the key projection folded in: logits = scale * (q Wk xnᵀ + q·bk)
        sn = _layer_norm_rows(s, w_s, b_s, m_d, D, ln_eps_s)
        q = tl.dot(sn, _weight_t(wq + wo, 0, o_d, o_d, m_d, m_d, D), input_precision=DOT_PREC) + _vec(bq + wo, 0, o_d, m_d)[None, :]
        # q' = q Wk: Wk is [D_out, D_in] row-major, so the tile Wk[o_out, o_in] read as [OUT, IN] is the right operand
        wk_t = tl.load(wk + wo + o_d[:, None] * D + o_d[None, :], mask=m_d[:, None] & m_d[None, :], other=0.0).to(tl.float32)
        qk = tl.dot(q, wk_t, input_precision=DOT_PREC) * scale
        c = tl.sum(q * _vec(bk + wo, 0, o_d, m_d)[None, :], axis=1) * scale
        c = tl.where(m_k, c, float("-inf"))
        den = tl.zeros([BLOCK_K], dtype=tl.float32)
        acc = tl.zeros([BLOCK_K, BLOCK_D], dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            o_n = n0 + tl.arange(0, BLOCK_N)
            m_n = o_n < N
            t = tl.load(x_b + o_n[:, None] * s_xn + o_d[None, :], mask=m_n[:, None] & m_d[None, :], other=0.0).to(tl.float32)
            xn = _layer_norm_rows(t, w_in, b_in, m_d, D, ln_eps_in)
            logit = tl.dot(qk, tl.trans(xn), input_precision=DOT_PREC) + c[:, None]  # [K, BLOCK_N]; -inf on padded slots
            e = tl.exp(logit - tl.max(logit, axis=0)[None, :])
            a = e / tl.sum(e, axis=0)[None, :]
            valid = m_n
            if HAS_MASK:
                valid = valid & (tl.load(mask + i_b * s_mb + o_n, mask=m_n, other=0) != 0)
            w = tl.where(m_k[:, None] & valid[None, :], a + eps, 0.0)
            den += tl.sum(w, axis=1)
            acc += tl.dot(w, xn, input_precision=DOT_PREC)
        inv = 1.0 / tl.maximum(den, _FLOOR)
        if SAVE:  # the weighted mean of the normalised inputs and its denominator: [ITERS, B, K, (D)]
            tl.store(save_u + (_it * i_B + i_b) * K * D + kd, acc * inv[:, None], mask=m_kd)
            tl.store(save_den + (_it * i_B + i_b) * K + o_k, den, mask=m_k)
        u = tl.dot(acc * inv[:, None], _weight_t(wv + wo, 0, o_d, o_d, m_d, m_d, D), input_precision=DOT_PREC)
        u += (den * inv)[:, None] * _vec(bv + wo, 0, o_d, m_d)[None, :]
        # GRU cell (gate order r, z, n as torch.nn.GRUCell)
        g_r = tl.dot(u, _weight_t(w_ih + wo, 0, o_d, o_d, m_d, m_d, D), input_precision=DOT_PREC) + _vec(b_ih + wo, 0, o_d, m_d)[None, :]
        g_z = tl.dot(u, _weight_t(w_ih + wo, D, o_d, o_d, m_d, m_d, D), input_precision=DOT_PREC) + _vec(b_ih + wo, D, o_d, m_d)[None, :]
        g_n = tl.dot(u, _weight_t(w_ih + wo, 2 * D, o_d, o_d, m_d, m_d, D), input_precision=DOT_PREC) + _vec(b_ih + wo, 2 * D, o_d, m_d)[None, :]
        h_r = tl.dot(s, _weight_t(w_hh + wo, 0, o_d, o_d, m_d, m_d, D), input_precision=DOT_PREC) + _vec(b_hh + wo, 0, o_d, m_d)[None, :]
        h_z = tl.dot(s, _weight_t(w_hh + wo, D, o_d, o_d, m_d, m_d, D), input_precision=DOT_PREC) + _vec(b_hh + wo, D, o_d, m_d)[None, :]
        h_n = tl.dot(s, _weight_t(w_hh + wo, 2 * D, o_d, o_d, m_d, m_d, D), input_precision=DOT_PREC) + _vec(b_hh + wo, 2 * D, o_d, m_d)[None, :]
        r = tl.sigmoid(g_r + h_r)
        z = tl.sigmoid(g_z + h_z)
        n_pre = g_n + r * h_n
        n_gate = 2.0 * tl.sigmoid(2.0 * n_pre) - 1.0  # tanh without libdevice
        s = (1.0 - z) * n_gate + z * s
        # residual MLP
        f = _layer_norm_rows(s, w_f, b_f, m_d, D, ln_eps_f)
        hdn = tl.dot(f, _weight_t(w1 + wo, 0, o_d, o_h, m_d, m_h, D), input_precision=DOT_PREC) + _vec(b1 + wo, 0, o_h, m_h)[None, :]
        hdn = tl.maximum(hdn, 0.0)
        s = s + tl.dot(hdn, _weight_t(w2 + wo, 0, o_h, o_d, m_h, m_d, HID), input_precision=DOT_PREC) + _vec(b2 + wo, 0, o_d, m_d)[None, :]
        s = tl.where(m_kd, s, 0.0)
    tl.store(out + i_b * K * D + o_k[:, None] * D + o_d[None, :], s.to(out.dtype.element_ty), mask=m_kd)
    if SAVE:
        tl.store(save_s + (ITERS * i_B + i_b) * K * D + kd, s, mask=m_kd)


def slot_iterations(x: torch.Tensor, slots: torch.Tensor | None, mask: torch.Tensor | None, params: dict, *,
                    iters: int, scale: float, eps: float, init: tuple | None = None, num_slots: int | None = None,
                    out_dtype: torch.dtype | None = None, block_n: int = 64, num_warps: int | None = None,
                    save: tuple | None = None) -> torch.Tensor:
    """Run ``iters`` slot-attention iterations in one launch (no autograd).

    Args:
        x: ``[B, N, D]`` raw inputs (normalised inside, by ``params["ln_in"]``).
        slots: ``[B, K, D]`` starting slots, or None with ``init``.
        mask: ``[B, N]`` bool (True = real token) or None.
        params: ``ln_in``, ``ln_s``, ``ln_f``: (weight, bias, eps) of the three LayerNorms; ``q``,
            ``k``, ``v``, ``mlp1``, ``mlp2``: (weight, bias) of the linears; ``gru``:
            (weight_ih, weight_hh, bias_ih, bias_hh). All contiguous, on x's device.
        init: instead of ``slots``, the initialisation computed inside the kernel:
            ``("gaussian", mu [D], logsigma [D], noise [B, K, D])`` -> ``mu + exp(logsigma) * noise``;
            ``("table", t)`` with ``t`` ``[K, D]`` (a learned table) or ``[D]`` (the mean, every slot).
        num_slots: K when ``init`` is a ``[D]`` mean.
        out_dtype: dtype of the result (default: the starting slots', else x's); the arithmetic is fp32.
        save: None, or fp32 buffers ``(slots [iters + 1, B, K, D], ubar [iters, B, K, D], den [iters, B, K])``
            the kernel fills for the backward: the slots entering each iteration (and the result), the
            weighted mean of the normalised inputs and its denominator.
    Returns:
        the slots after the last iteration, ``[B, K, D]``.
    """
    b, n, d = x.shape
    hid = params["mlp1"][0].shape[0]
    if x.stride(-1) != 1:
        x = x.contiguous()
    mu = logsigma = None
    s_tk = 0
    if init is None:
        slots = src = slots.contiguous()
        k, mode, dtype = slots.shape[1], 0, slots.dtype
    elif init[0] == "gaussian":
        _, mu, logsigma, src = init
        k, mode, dtype = src.shape[1], 1, src.dtype
    else:
        mu = init[1]
        k = mu.shape[0] if mu.dim() == 2 else num_slots
        s_tk = mu.shape[1] if mu.dim() == 2 else 0
        mode, dtype, src = 2, x.dtype, x
    out = torch.empty((b, k, d), device=x.device, dtype=out_dtype or dtype)
    m = None if mask is None else mask.view(torch.uint8)  # a view: no conversion launch
    (w_in, b_in, e_in), (w_s, b_s, e_s), (w_f, b_f, e_f) = params["ln_in"], params["ln_s"], params["ln_f"]
    w_ih, w_hh, b_ih, b_hh = params["gru"]
    dot_prec = "ieee" if x.dtype == torch.float32 else "tf32"
    _slot_iterations_fwd[(b,)](
        x, m if m is not None else x, src, mu if mu is not None else x, logsigma if logsigma is not None else x, out,
        *(save if save is not None else (out, out, out)),
        w_in, b_in, w_s, b_s, w_f, b_f,
        *params["q"], *params["k"], *params["v"], w_ih, b_ih, w_hh, b_hh, *params["mlp1"], *params["mlp2"],
        n, x.stride(0), x.stride(1), 0 if m is None else m.stride(0), s_tk, 0, float(scale), float(eps),
        float(e_in), float(e_s), float(e_f),
        K=k, D=d, HID=hid, ITERS=iters, HAS_MASK=m is not None, INIT=mode, SAVE=save is not None,
        BLOCK_K=max(16, _next_pow2(k)), BLOCK_D=max(16, _next_pow2(d)), BLOCK_H=max(16, _next_pow2(hid)),
        BLOCK_N=block_n, DOT_PREC=dot_prec, num_warps=num_warps or 8,  # sm_90 AOT: 8 warps spill least (docs/kernels.md)
    )
    return out


def _nbytes(t) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def _traffic(grid, a):
    """Per launch: x (and the mask) streamed once per iteration by each of the B programs, the
    weights once (L2 serves the other programs), the slots read and written once. FLOPs count the
    padded MMA tiles (BLOCK_K x BLOCK_D x BLOCK_N / BLOCK_H), what the tensor cores execute."""
    it, n, bk, bd, bh = a["ITERS"], a["N"], a["BLOCK_K"], a["BLOCK_D"], a["BLOCK_H"]
    b = grid[0]
    weights = sum(_nbytes(a[k]) for k in ("ln_in_w", "ln_in_b", "ln_s_w", "ln_s_b", "ln_f_w", "ln_f_b", "wq", "bq",
                                          "wk", "bk", "wv", "bv", "w_ih", "b_ih", "w_hh", "b_hh", "w1", "b1", "w2", "b2"))
    x_rows = b * n * a["D"] * a["x"].element_size()
    mask = b * n if a["HAS_MASK"] else 0
    init = {0: _nbytes(a["slots_in"]), 1: _nbytes(a["slots_in"]) + 2 * a["D"] * 4}.get(a["INIT"], a["K"] * a["D"] * 4)
    read = it * (x_rows + mask) + weights + init
    per_iter = 2 * bk * n * bd * 2 + 2 * bk * bd * bd * (3 + 6) + 2 * 2 * bk * bd * bh
    saved = sum(_nbytes(a[k]) for k in ("save_s", "save_u", "save_den")) if a["SAVE"] else 0
    return read, _nbytes(a["out"]) + saved, b * it * per_iter


TRAFFIC = {"_slot_iterations_fwd": _traffic}
