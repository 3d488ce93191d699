"""Fused slot-attention step: Triton kernels (forward, backward) and their launchers.

One attention step of slot attention for P independent problems and H heads::

    s[k, n]  = scale * <q[k], k[n]>                  (fp32)
    a[k, n]  = softmax over k of s[:, n]             (competition between slots, per token)
    w[k, n]  = (a[k, n] + eps) * valid[n]            (valid = inside the sequence and not padding)
    den[k]   = sum_n w[k, n]
    u[k]     = sum_n w[k, n] * v[n] / max(den[k], floor)

The softmax runs over K (a handful of slots), which fits in registers, so one pass over the tokens
accumulates both ``sum_n w*v`` and ``sum_n w``; no online rescaling, and the ``[K, N]`` matrix only
reaches memory when attention maps are asked for. The backward recomputes ``s``, ``a`` and ``w``
tile by tile from q, k, v and the saved ``den`` instead of storing ``[K, N]``.

Layouts (last dimension contiguous; other strides free):
    padded:  q [P, K, H, DH], k/v [P, N, H, DH], mask [P, N] (bool as uint8), attn [P, H, K, N]
    varlen:  q [P, K, H, DH], k/v [T, H, DH], cu_seqlens int32 [P + 1], attn [H, K, T]
    out [P, K, H, DH] (q's dtype), den [P, H, K] fp32 (the un-clamped sum of weights).

Grid: (P*H x D-chunks of the values, splits of N); the D-chunks of a problem are neighbours. A program reads its problem's q once per tile,
streams k (and v) over its token range once, and writes one D-chunk of the output. With more than
one N split the programs write fp32 partial sums that the launcher adds up (deterministic, no
atomics); with one split the program normalises and stores the output directly.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

# The weighted mean's denominator floor; equal to slotvlm.ops.slot_attention_ref.DENOM_FLOOR.
DENOM_FLOOR = 1e-12


# Read once: Triton itself fixes interpreted-or-compiled when the kernels below are decorated.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _interpreting() -> bool:
    return _INTERPRET


# --------------------------------------------------------------------------------------- kernels
@triton.jit
def _program_ids(H: tl.constexpr, DH: tl.constexpr, BLOCK_DV: tl.constexpr):
    """(D-chunk, problem·head, N split, problem, head, number of problem·heads) of this program.
    The D-chunks of one problem are adjacent program ids, so they run together and share k/v in L2."""
    NUM_D = (DH + BLOCK_DV - 1) // BLOCK_DV
    i_d = tl.program_id(0) % NUM_D
    i_ph = (tl.program_id(0) // NUM_D).to(tl.int64)
    return i_d, i_ph, tl.program_id(1), i_ph // H, i_ph % H, tl.num_programs(0) // NUM_D


@triton.jit
def _problem_inputs(
    q, k, v, bias, i_p, i_h, i_ph, o_k, m_k, s_qp, s_qh, s_kp, s_kh, s_vp, s_vh,
    K: tl.constexpr, BLOCK_K: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    """Base pointers of this problem/head's q, k, v and its per-slot logit bias (0 without one)."""
    b_c = tl.zeros([BLOCK_K], dtype=tl.float32)
    if HAS_BIAS:
        b_c = tl.load(bias + i_ph * K + o_k, mask=m_k, other=0.0).to(tl.float32)
    return q + i_p * s_qp + i_h * s_qh, k + i_p * s_kp + i_h * s_kh, v + i_p * s_vp + i_h * s_vh, b_c


@triton.jit
def _token_range(cu_seqlens, i_p, i_s, N, N_PER_SPLIT, IS_VARLEN: tl.constexpr):
    """(first token of problem i_p in the sequence dimension, this split's [start, end) in it)."""
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_p).to(tl.int64)
        n_len = tl.load(cu_seqlens + i_p + 1).to(tl.int64) - bos
    else:
        bos = i_p * 0
        n_len = i_p * 0 + N
    n_start = i_s * N_PER_SPLIT
    return bos, n_start, tl.minimum(n_start + N_PER_SPLIT, n_len)


@triton.jit
def _slot_softmax(
    p_q, p_k, o_k, m_k, o_t, m_n, s_qk, s_kn, scale, b_c,
    DH: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """a [BLOCK_K, BLOCK_N] = softmax over slots of scale * (q kᵀ + c) for one tile of tokens (fp32)."""
    b_s = tl.zeros([BLOCK_K, BLOCK_N], dtype=tl.float32)
    for d0 in tl.range(0, DH, BLOCK_DK):
        o_dk = d0 + tl.arange(0, BLOCK_DK)
        m_dk = o_dk < DH
        b_q = tl.load(p_q + o_k[:, None] * s_qk + o_dk[None, :], mask=m_k[:, None] & m_dk[None, :], other=0.0)
        b_kt = tl.load(p_k + o_t[None, :] * s_kn + o_dk[:, None], mask=m_dk[:, None] & m_n[None, :], other=0.0)
        b_s += tl.dot(b_q, b_kt, input_precision=DOT_PREC)
    b_s = tl.where(m_k[:, None], (b_s + b_c[:, None]) * scale, float("-inf"))
    b_e = tl.exp(b_s - tl.max(b_s, axis=0)[None, :])
    return b_e / tl.sum(b_e, axis=0)[None, :]


@triton.jit
def _valid_tokens(mask, i_p, s_mp, o_n, m_n, HAS_MASK: tl.constexpr):
    """Tokens inside the split's range and not padding."""
    if HAS_MASK:
        b_m = tl.load(mask + i_p * s_mp + o_n, mask=m_n, other=0)
        return m_n & (b_m != 0)
    return m_n


class _ArgFlags(triton.runtime.autotuner.Heuristics):
    """``triton.heuristics`` for flags that say whether an argument is None, without its per-launch
    cost: Triton's ``Heuristics.run`` builds a dict of all (30-odd) arguments for every flag on every
    launch (~10 µs of host time per launch); here each flag's argument position is found once, at
    decoration, and a launch reads only those arguments. ``values`` stays the rule table (what
    ``triton.heuristics`` would hold), so tools that read it see the same thing."""

    def __init__(self, fn, rules: dict):
        # rules: {flag: (argument name, True = flag set when the argument is given)}
        values = {flag: (lambda args, name=name, given=given: (args[name] is not None) == given)
                  for flag, (name, given) in rules.items()}
        super().__init__(fn, fn.arg_names, values)
        self._fast = tuple((flag, name, fn.arg_names.index(name), given) for flag, (name, given) in rules.items())

    def run(self, *args, **kwargs):
        n = len(args)
        for flag, name, i, given in self._fast:
            kwargs[flag] = ((args[i] if i < n else kwargs.get(name)) is not None) == given
        return self.fn.run(*args, **kwargs)


def arg_flags(given: dict | None = None, missing: dict | None = None):
    """``@triton.heuristics`` for a kernel's optional pointer arguments: each constexpr flag in
    ``given`` (``{flag: argument name}``) is True when that argument was passed (not None), each in
    ``missing`` when it was left out (None). Resolved by argument position (:class:`_ArgFlags`)."""
    rules = {flag: (name, True) for flag, name in (given or {}).items()}
    rules.update({flag: (name, False) for flag, name in (missing or {}).items()})
    return lambda fn: _ArgFlags(fn, rules)


@arg_flags(dict(HAS_MASK="mask", IS_VARLEN="cu_seqlens", STORE_ATTN="attn", HAS_BIAS="bias"),
           missing=dict(NORMALIZE="ws_acc"))
@triton.jit(do_not_specialize=["N", "N_PER_SPLIT"])
def _slot_attn_fwd_kernel(
    q, k, v, mask, cu_seqlens, bias,
    out, den, ws_acc, ws_den, attn,
    scale, eps, floor,
    N, N_PER_SPLIT,
    s_qp, s_qk, s_qh,
    s_kp, s_kn, s_kh,
    s_vp, s_vn, s_vh,
    s_mp,
    s_op, s_ok, s_oh,
    s_ap, s_ah, s_ak,
    K: tl.constexpr, H: tl.constexpr, DH: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    DOT_PREC: tl.constexpr,
    HAS_MASK: tl.constexpr, IS_VARLEN: tl.constexpr, STORE_ATTN: tl.constexpr, NORMALIZE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    i_d, i_ph, i_s, i_p, i_h, n_ph = _program_ids(H, DH, BLOCK_DV)
    bos, n_start, n_end = _token_range(cu_seqlens, i_p, i_s, N, N_PER_SPLIT, IS_VARLEN)
    o_k = tl.arange(0, BLOCK_K)
    m_k = o_k < K
    o_dv = i_d * BLOCK_DV + tl.arange(0, BLOCK_DV)
    m_dv = o_dv < DH
    p_q, p_k, p_v, b_c = _problem_inputs(
        q, k, v, bias, i_p, i_h, i_ph, o_k, m_k, s_qp, s_qh, s_kp, s_kh, s_vp, s_vh, K, BLOCK_K, HAS_BIAS
    )

    b_acc = tl.zeros([BLOCK_K, BLOCK_DV], dtype=tl.float32)
    b_den = tl.zeros([BLOCK_K], dtype=tl.float32)
    for n0 in tl.range(n_start, n_end, BLOCK_N):
        o_n = n0 + tl.arange(0, BLOCK_N)
        m_n = o_n < n_end
        o_t = bos + o_n  # token index in the (padded or packed) sequence dimension
        b_a = _slot_softmax(p_q, p_k, o_k, m_k, o_t, m_n, s_qk, s_kn, scale, b_c, DH, BLOCK_K, BLOCK_N, BLOCK_DK, DOT_PREC)
        m_w = m_k[:, None] & _valid_tokens(mask, i_p, s_mp, o_n, m_n, HAS_MASK)[None, :]
        b_w = tl.where(m_w, b_a + eps, 0.0)
        b_den += tl.sum(b_w, axis=1)
        b_v = tl.load(p_v + o_t[:, None] * s_vn + o_dv[None, :], mask=m_n[:, None] & m_dv[None, :], other=0.0)
        b_acc += tl.dot(b_w.to(b_v.dtype), b_v, input_precision=DOT_PREC)
        if STORE_ATTN:
            if i_d == 0:
                p_a = attn + i_p * s_ap + i_h * s_ah + o_k[:, None] * s_ak + o_t[None, :]
                tl.store(p_a, tl.where(m_w, b_a, 0.0).to(attn.dtype.element_ty), mask=m_k[:, None] & m_n[None, :])

    if NORMALIZE:
        b_u = b_acc / tl.maximum(b_den, floor)[:, None]
        p_o = out + i_p * s_op + i_h * s_oh + o_k[:, None] * s_ok + o_dv[None, :]
        tl.store(p_o, b_u.to(out.dtype.element_ty), mask=m_k[:, None] & m_dv[None, :])
        if i_d == 0:
            tl.store(den + i_ph * K + o_k, b_den, mask=m_k)
    else:
        # partials: ws_acc [S, P*H, K, DH], ws_den [S, P*H, K] (fp32, contiguous)
        i_sph = i_s.to(tl.int64) * n_ph + i_ph
        p_w = ws_acc + (i_sph * K + o_k[:, None]) * DH + o_dv[None, :]
        tl.store(p_w, b_acc, mask=m_k[:, None] & m_dv[None, :])
        if i_d == 0:
            tl.store(ws_den + i_sph * K + o_k, b_den, mask=m_k)


@arg_flags(dict(HAS_MASK="mask", IS_VARLEN="cu_seqlens", HAS_DATTN="dattn", HAS_BIAS="bias"),
           missing=dict(SHARED_KV="dv", NORMALIZE="ws_dq"))
@triton.jit(do_not_specialize=["N", "N_PER_SPLIT"])
def _slot_attn_bwd_kernel(
    q, k, v, mask, cu_seqlens, bias, out, dout, den, dattn,
    dq, dk, dv, ws_dq, dbias, ws_dbias,
    scale, eps, floor,
    N, N_PER_SPLIT,
    s_qp, s_qk, s_qh,
    s_kp, s_kn, s_kh,
    s_vp, s_vn, s_vh,
    s_mp,
    s_op, s_ok, s_oh,
    s_ap, s_ah, s_ak,
    K: tl.constexpr, H: tl.constexpr, DH: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    DOT_PREC: tl.constexpr,
    HAS_MASK: tl.constexpr, IS_VARLEN: tl.constexpr, HAS_DATTN: tl.constexpr, NORMALIZE: tl.constexpr,
    HAS_BIAS: tl.constexpr, SHARED_KV: tl.constexpr,
):
    """Gradients of the step, recomputing s, a, w per tile.

    With dW[k,n] = <du[k], v[n]> and g[k] = <du[k], u[k]>:
        dv[n] = sum_k W[k,n] du[k]                 (W = w / max(den, floor))
        dw    = (dW - g * [den >= floor]) / max(den, floor)
        da    = dw * valid (+ dattn * valid)
        ds    = a * (da - sum_k a * da) * scale
        dq    = ds k,  dk = ds^T q,  dbias = sum_n ds
    q/dq/out/dout/dattn share q's (out's) strides; k/dk share k's; v/dv share v's.
    """
    i_d, i_ph, i_s, i_p, i_h, n_ph = _program_ids(H, DH, BLOCK_DV)
    bos, n_start, n_end = _token_range(cu_seqlens, i_p, i_s, N, N_PER_SPLIT, IS_VARLEN)
    o_k = tl.arange(0, BLOCK_K)
    m_k = o_k < K
    o_dv = i_d * BLOCK_DV + tl.arange(0, BLOCK_DV)
    m_dv = o_dv < DH
    p_q, p_k, p_v, b_c = _problem_inputs(
        q, k, v, bias, i_p, i_h, i_ph, o_k, m_k, s_qp, s_qh, s_kp, s_kh, s_vp, s_vh, K, BLOCK_K, HAS_BIAS
    )
    p_u = out + i_p * s_op + i_h * s_oh
    p_du = dout + i_p * s_op + i_h * s_oh

    # g[k] = <du[k], u[k]> and the clamped denominator
    b_g = tl.zeros([BLOCK_K], dtype=tl.float32)
    for d0 in tl.range(0, DH, BLOCK_DK):
        o_dk = d0 + tl.arange(0, BLOCK_DK)
        m_qd = m_k[:, None] & (o_dk < DH)[None, :]
        b_o = tl.load(p_u + o_k[:, None] * s_ok + o_dk[None, :], mask=m_qd, other=0.0).to(tl.float32)
        b_do = tl.load(p_du + o_k[:, None] * s_ok + o_dk[None, :], mask=m_qd, other=0.0).to(tl.float32)
        b_g += tl.sum(b_o * b_do, axis=1)
    b_draw = tl.load(den + i_ph * K + o_k, mask=m_k, other=1.0)
    b_dc = tl.maximum(b_draw, floor)
    b_g = tl.where(b_draw >= floor, b_g, 0.0)

    b_dq = tl.zeros([BLOCK_K, BLOCK_DV], dtype=tl.float32)
    b_dbias = tl.zeros([BLOCK_K], dtype=tl.float32)
    for n0 in tl.range(n_start, n_end, BLOCK_N):
        o_n = n0 + tl.arange(0, BLOCK_N)
        m_n = o_n < n_end
        o_t = bos + o_n
        b_a = _slot_softmax(p_q, p_k, o_k, m_k, o_t, m_n, s_qk, s_kn, scale, b_c, DH, BLOCK_K, BLOCK_N, BLOCK_DK, DOT_PREC)
        # dW[k, n] = <du[k], v[n]>
        b_dw = tl.zeros([BLOCK_K, BLOCK_N], dtype=tl.float32)
        for d0 in tl.range(0, DH, BLOCK_DK):
            o_dk = d0 + tl.arange(0, BLOCK_DK)
            m_dk = o_dk < DH
            b_du = tl.load(p_du + o_k[:, None] * s_ok + o_dk[None, :], mask=m_k[:, None] & m_dk[None, :], other=0.0)
            b_vt = tl.load(p_v + o_t[None, :] * s_vn + o_dk[:, None], mask=m_dk[:, None] & m_n[None, :], other=0.0)
            b_dw += tl.dot(b_du.to(b_vt.dtype), b_vt, input_precision=DOT_PREC)
        m_w = m_k[:, None] & _valid_tokens(mask, i_p, s_mp, o_n, m_n, HAS_MASK)[None, :]
        b_W = tl.where(m_w, b_a + eps, 0.0) / b_dc[:, None]
        b_da = tl.where(m_w, (b_dw - b_g[:, None]) / b_dc[:, None], 0.0)
        if HAS_DATTN:
            p_da = dattn + i_p * s_ap + i_h * s_ah + o_k[:, None] * s_ak + o_t[None, :]
            b_dat = tl.load(p_da, mask=m_k[:, None] & m_n[None, :], other=0.0).to(tl.float32)
            b_da += tl.where(m_w, b_dat, 0.0)
        b_ds = b_a * (b_da - tl.sum(b_a * b_da, axis=0)[None, :]) * scale
        if HAS_BIAS:
            b_dbias += tl.sum(b_ds, axis=1)
        # this program's D-chunk of dq, dk, dv
        m_qv = m_k[:, None] & m_dv[None, :]
        m_nv = m_n[:, None] & m_dv[None, :]
        b_qc = tl.load(p_q + o_k[:, None] * s_qk + o_dv[None, :], mask=m_qv, other=0.0)
        b_duc = tl.load(p_du + o_k[:, None] * s_ok + o_dv[None, :], mask=m_qv, other=0.0)
        b_kc = tl.load(p_k + o_t[:, None] * s_kn + o_dv[None, :], mask=m_nv, other=0.0)
        b_dk = tl.dot(tl.trans(b_ds).to(b_qc.dtype), b_qc, input_precision=DOT_PREC)
        b_dv = tl.dot(tl.trans(b_W).to(b_duc.dtype), b_duc, input_precision=DOT_PREC)
        b_dq += tl.dot(b_ds.to(b_kc.dtype), b_kc, input_precision=DOT_PREC)
        p_dk = dk + i_p * s_kp + i_h * s_kh + o_t[:, None] * s_kn + o_dv[None, :]
        if SHARED_KV:  # k and v are one tensor (the projected form): write d(k) + d(v) once
            tl.store(p_dk, (b_dk + b_dv).to(dk.dtype.element_ty), mask=m_nv)
        else:
            p_dv = dv + i_p * s_vp + i_h * s_vh + o_t[:, None] * s_vn + o_dv[None, :]
            tl.store(p_dk, b_dk.to(dk.dtype.element_ty), mask=m_nv)
            tl.store(p_dv, b_dv.to(dv.dtype.element_ty), mask=m_nv)

    m_qv = m_k[:, None] & m_dv[None, :]
    if NORMALIZE:
        p_dq = dq + i_p * s_qp + i_h * s_qh + o_k[:, None] * s_qk + o_dv[None, :]
        tl.store(p_dq, b_dq.to(dq.dtype.element_ty), mask=m_qv)
        if HAS_BIAS:
            if i_d == 0:
                tl.store(dbias + i_ph * K + o_k, b_dbias, mask=m_k)
    else:
        i_sph = i_s.to(tl.int64) * n_ph + i_ph
        p_w = ws_dq + (i_sph * K + o_k[:, None]) * DH + o_dv[None, :]
        tl.store(p_w, b_dq, mask=m_qv)
        if HAS_BIAS:
            if i_d == 0:
                tl.store(ws_dbias + i_sph * K + o_k, b_dbias, mask=m_k)


# ------------------------------------------------------------------------------------ launchers
def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


# Candidate tiles (BLOCK_N, BLOCK_DV, num_warps) for H100/H200. Chosen from sm_90 ahead-of-time
# compiles (ptxas resource usage, bf16): these stay at <= 255 registers without spilling. The
# backward holds more live tiles (a, dW, W, ds and the dk/dv blocks), hence its smaller tiles.
_FWD_TILES = [(32, 1024, 8), (16, 1024, 8), (32, 512, 8), (64, 256, 8), (32, 256, 4), (32, 128, 4), (64, 64, 4), (32, 64, 4)]
_BWD_TILES = [(16, 256, 8), (32, 128, 8), (64, 64, 8), (16, 128, 4), (32, 64, 4), (16, 64, 4)]


def _gpu_configs(which: str) -> list[triton.Config]:
    tiles = _FWD_TILES if which == "fwd" else _BWD_TILES
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_DV": bdv, "BLOCK_DK": min(bdv, 128)}, num_warps=w, num_stages=2)
        for bn, bdv, w in tiles
    ]


def _prune(configs, named_args, **kwargs):
    """Clamp the D tiles to the head width and drop the duplicates that leaves."""
    args = {**named_args, **kwargs}
    dhp = max(16, _next_pow2(args["DH"]))
    kept, seen = [], set()
    for c in configs:
        bn = c.kwargs["BLOCK_N"]
        bdv = min(c.kwargs["BLOCK_DV"], dhp)
        bdk = min(c.kwargs["BLOCK_DK"], dhp)
        key = (bn, bdv, bdk, c.num_warps, c.num_stages)
        if key in seen:
            continue
        seen.add(key)
        kept.append(triton.Config({"BLOCK_N": bn, "BLOCK_DV": bdv, "BLOCK_DK": bdk}, num_warps=c.num_warps, num_stages=c.num_stages))
    return kept


@functools.lru_cache(maxsize=None)
def _tuned(which: str):
    kernel = _slot_attn_fwd_kernel if which == "fwd" else _slot_attn_bwd_kernel
    return triton.autotune(
        configs=_gpu_configs(which),
        key=["K", "H", "DH", "BLOCK_K", "DOT_PREC"],
        prune_configs_by={"early_config_prune": _prune},
    )(kernel)


@functools.lru_cache(maxsize=8)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _default_config(dh: int) -> dict:
    """The single configuration used under the interpreter (and with autotune off)."""
    dhp = max(16, _next_pow2(dh))
    return {"BLOCK_N": 16, "BLOCK_DV": dhp, "BLOCK_DK": dhp}


def _n_split(ph: int, max_n: int, device: torch.device) -> int:
    """How many programs share one problem's tokens: only when P*H alone cannot fill the GPU."""
    if device.type != "cuda":
        return 1
    sms = _num_sms(device.index if device.index is not None else torch.cuda.current_device())
    if ph >= sms:
        return 1
    return max(1, min(triton.cdiv(max_n, 512), triton.cdiv(2 * sms, ph)))


def _dot_prec(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _launch(kernel, grid_base, config, n_split, args: dict, device: torch.device):
    """Launch ``kernel`` with an explicit config, or its autotuned twin when config is None on GPU."""
    if config is None and device.type == "cuda" and not _interpreting():
        tuned = _tuned("fwd" if kernel is _slot_attn_fwd_kernel else "bwd")
        ph = grid_base

        def grid(meta):
            return (ph * triton.cdiv(args["DH"], meta["BLOCK_DV"]), n_split)

        tuned[grid](**args)
        return
    config = dict(config or _default_config(args["DH"]))
    num_warps = config.pop("num_warps", 4)
    num_stages = config.pop("num_stages", 2)
    grid = (grid_base * triton.cdiv(args["DH"], config["BLOCK_DV"]), n_split)
    kernel[grid](**args, **config, num_warps=num_warps, num_stages=num_stages)


def _common_args(q, k, v, mask, cu_seqlens, bias, max_seqlen, n_split, attn, *, scale, eps):
    """Arguments both kernels share, the number of N splits, and the per-split token count."""
    P, K, H, DH = q.shape
    if cu_seqlens is None:
        N = max_n = k.shape[1]
        s_k = (k.stride(0), k.stride(1), k.stride(2))
        s_v = (v.stride(0), v.stride(1), v.stride(2))
    else:  # packed tokens: no problem stride, the token index carries the offset
        N = 0
        max_n = int(max_seqlen) if max_seqlen is not None else int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item())
        s_k = (0, k.stride(0), k.stride(1))
        s_v = (0, v.stride(0), v.stride(1))
    if attn is None:
        s_a = (0, 0, 0)
    elif cu_seqlens is None:
        s_a = (attn.stride(0), attn.stride(1), attn.stride(2))
    else:
        s_a = (0, attn.stride(0), attn.stride(1))
    S = n_split if n_split is not None else _n_split(P * H, max_n, q.device)
    args = dict(
        q=q, k=k, v=v, mask=mask, cu_seqlens=cu_seqlens, bias=bias,
        scale=float(scale), eps=float(eps), floor=DENOM_FLOOR,
        N=N, N_PER_SPLIT=triton.cdiv(max(max_n, 1), S),
        s_qp=q.stride(0), s_qk=q.stride(1), s_qh=q.stride(2),
        s_kp=s_k[0], s_kn=s_k[1], s_kh=s_k[2],
        s_vp=s_v[0], s_vn=s_v[1], s_vh=s_v[2],
        s_mp=mask.stride(0) if mask is not None else 0,
        s_ap=s_a[0], s_ah=s_a[1], s_ak=s_a[2],
        K=K, H=H, DH=DH, BLOCK_K=max(16, _next_pow2(K)), DOT_PREC=_dot_prec(q.dtype),
    )
    return args, S


def slot_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    *,
    scale: float,
    eps: float,
    return_attn: bool = False,
    config: dict | None = None,
    n_split: int | None = None,
    bias: torch.Tensor | None = None,
):
    """Forward launcher. Returns ``(out [P,K,H,DH], den fp32 [P,H,K], attn or None)``.

    q ``[P, K, H, DH]``; padded k/v ``[P, N, H, DH]`` with optional mask ``[P, N]`` (bool/uint8),
    or packed k/v ``[T, H, DH]`` with ``cu_seqlens`` int32 ``[P + 1]`` and ``max_seqlen``.
    Tensors must have a contiguous last dimension (the public wrappers make them contiguous).
    ``config`` (``BLOCK_N``, ``BLOCK_DV``, ``BLOCK_DK``, optional ``num_warps``/``num_stages``)
    and ``n_split`` override autotuning and the split heuristic (tests use them to reach every
    path). ``bias`` (fp32 ``[P, H, K]``, contiguous) is added to ``q·kᵀ`` before the scale:
    the projected-key form ``q·(W x + b) = (Wᵀq)·x + q·b``.
    """
    P, K, H, DH = q.shape
    attn = None
    if return_attn:
        shape = (P, H, K, k.shape[1]) if cu_seqlens is None else (H, K, k.shape[0])
        attn = torch.zeros(shape, device=q.device, dtype=q.dtype)
    args, S = _common_args(q, k, v, mask, cu_seqlens, bias, max_seqlen, n_split, attn, scale=scale, eps=eps)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    den = torch.empty((P, H, K), device=q.device, dtype=torch.float32)
    ws_acc = ws_den = None
    if S > 1:
        ws_acc = torch.empty((S, P, H, K, DH), device=q.device, dtype=torch.float32)
        ws_den = torch.empty((S, P, H, K), device=q.device, dtype=torch.float32)
    args.update(out=out, den=den, ws_acc=ws_acc, ws_den=ws_den, attn=attn,
                s_op=out.stride(0), s_ok=out.stride(1), s_oh=out.stride(2))
    if P * H > 0:
        _launch(_slot_attn_fwd_kernel, P * H, config, S, args, q.device)
    if S > 1:
        den = ws_den.sum(0)
        acc = ws_acc.sum(0) / den.clamp_min(DENOM_FLOOR)[..., None]  # [P, H, K, DH]
        out.copy_(acc.transpose(1, 2))
    return out, den, attn


def slot_attention_bwd(
    q, k, v, mask, cu_seqlens, max_seqlen, out, dout, den, dattn=None,
    *, scale: float, eps: float, config: dict | None = None, n_split: int | None = None,
    bias: torch.Tensor | None = None, shared_kv: bool = False,
):
    """Backward launcher. Returns ``(dq, dk, dv, dbias or None)``, dq/dk/dv strided like q, k, v.

    ``shared_kv=True`` (k and v are the same tensor): dk holds d(k) + d(v) and dv is None.

    q, ``out`` and ``dout`` ``[P, K, H, DH]`` must share strides (the caller makes them
    contiguous); ``den`` is the forward's ``[P, H, K]`` fp32; ``dattn`` the gradient of the
    attention maps (laid out like the forward's ``attn``) or None.
    """
    P, K, H, DH = q.shape
    if out.stride() != q.stride() or dout.stride() != q.stride():
        raise ValueError(
            f"slot_attention_bwd: out/dout must have q's strides {q.stride()}, got {out.stride()} and {dout.stride()}"
        )
    args, S = _common_args(q, k, v, mask, cu_seqlens, bias, max_seqlen, n_split, dattn, scale=scale, eps=eps)
    dq = torch.empty_like(q)
    # packed layouts: tokens past cu_seqlens[-1] (if any) belong to no problem and get zeros
    dk = torch.zeros_like(k) if cu_seqlens is not None else torch.empty_like(k)
    dv = None if shared_kv else (torch.zeros_like(v) if cu_seqlens is not None else torch.empty_like(v))
    if dk.stride() != k.stride() or (dv is not None and dv.stride() != v.stride()) or dq.stride() != q.stride():
        raise ValueError("slot_attention_bwd: q, k, v must be dense (their gradients share their strides)")
    ws_dq = torch.empty((S, P, H, K, DH), device=q.device, dtype=torch.float32) if S > 1 else None
    dbias = ws_dbias = None
    if bias is not None:
        dbias = torch.empty((P, H, K), device=q.device, dtype=torch.float32)
        ws_dbias = torch.empty((S, P, H, K), device=q.device, dtype=torch.float32) if S > 1 else None
    args.update(out=out, dout=dout, den=den, dattn=dattn, dq=dq, dk=dk, dv=dv, ws_dq=ws_dq,
                dbias=dbias, ws_dbias=ws_dbias,
                s_op=q.stride(0), s_ok=q.stride(1), s_oh=q.stride(2))
    if P * H > 0:
        _launch(_slot_attn_bwd_kernel, P * H, config, S, args, q.device)
    if S > 1:
        dq.copy_(ws_dq.sum(0).transpose(1, 2))
        if bias is not None:
            dbias = ws_dbias.sum(0)
    return dq, dk, dv, dbias
