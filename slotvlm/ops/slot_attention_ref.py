"""Plain-PyTorch reference of one slot-attention step and of the GRU cell.

These are the specification the Triton kernels are tested against, and the CPU code path.

Layouts (heads split off the channel dimension without a copy):
    q       [B, K, H, Dh]   queries of K slots
    k, v    [B, N, H, Dh]   keys / values of N input tokens
    mask    [B, N] bool     True = real token, False = padding (optional)
    updates [B, K, H, Dh]
    attn    [B, H, K, N]    softmax over slots (sums to 1 over K for a real token; 0 at padding)

Numerics: the softmax over slots, the ``+eps`` and the sums over inputs run in float32 (or the
input dtype if wider) whatever the input dtype, because eps = 1e-8 vanishes in bf16/fp16.
"""
from __future__ import annotations

import torch

from .._checks import check_gru_args, check_step_args, check_tensor

# Denominator floor of the weighted mean. The slot-attention package uses F.normalize, whose floor
# is 1e-12; we use the same so numbers match. It only matters for an all-padding row, whose
# updates are then exactly zero instead of NaN.
DENOM_FLOOR = 1e-12


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def slot_attention_step_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    scale: float,
    eps: float = 1e-8,
    return_attn: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One attention step of slot attention (Locatello et al. 2020, Algorithm 1).

    ``logits = q·kᵀ·scale``; softmax over slots (per head); ``+eps``; zero at padding; divide
    by the sum over inputs; ``updates = attn·v``.

    Args:
        q: ``[B, K, H, Dh]``. k: ``[B, N, H, Dh]``. v: ``[B, N, H, Dv]``. mask: ``[B, N]`` bool or None.
        scale: multiplies the logits (usually ``Dh ** -0.5``).
        eps: added to the attention after the softmax.
        return_attn: also return the softmax-over-slots attention ``[B, H, K, N]``.

    Returns:
        ``(updates [B, K, H, Dv], attn [B, H, K, N] or None)``; updates in q's dtype.
    """
    check_step_args(q, k, v, varlen=False, scale=scale, eps=eps, any_value_width=True)
    if mask is not None:
        check_tensor("mask", mask, shape=(q.shape[0], k.shape[1]), dtype=torch.bool, device=q.device)
    acc = _acc_dtype(q.dtype)
    logits = torch.einsum("bkhd,bnhd->bhkn", q, k).to(acc) * scale
    attn = logits.softmax(dim=2)  # over slots
    weights = attn + eps
    if mask is not None:
        keep = mask[:, None, None, :]
        weights = weights.masked_fill(~keep, 0.0)
        attn = attn.masked_fill(~keep, 0.0)
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(DENOM_FLOOR)
    updates = torch.einsum("bhkn,bnhd->bkhd", weights.to(v.dtype) if v.dtype != acc else weights, v)
    return updates.to(q.dtype), (attn.to(q.dtype) if return_attn else None)


def gru_cell_ref(
    x: torch.Tensor,
    h: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None,
    bias_hh: torch.Tensor | None,
) -> torch.Tensor:
    """``torch.nn.GRUCell`` written out (gate order r, z, n as in PyTorch).

    x ``[M, D_in]``, h ``[M, D]``, weight_ih ``[3D, D_in]``, weight_hh ``[3D, D]`` → ``[M, D]``.
    """
    check_gru_args(x, h, weight_ih, weight_hh)
    gi = torch.nn.functional.linear(x, weight_ih, bias_ih)
    gh = torch.nn.functional.linear(h, weight_hh, bias_hh)
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h
