"""Object-discovery metrics: ARI, FG-ARI, mean best overlap (mBO) and Hungarian-matched mIoU.

Conventions (the slot attention paper, OCL):

- A segmentation is given either as an **integer label map** ``[B, *S]`` (any integer dtype,
  labels ``>= 0``; ``S`` is the spatial shape, e.g. ``(H, W)`` or ``(N,)``) or as **masks**
  ``[B, K, *S]`` of a floating dtype (one-hot, or soft: e.g. a softmax over the K slots). The dtype
  tells them apart: integer = labels, floating = masks.
- The ground truth uses label 0 (``background``) for the background. **FG-ARI** is the ARI over the
  pixels whose ground truth is not background; **ARI** counts every pixel.
- Every function returns one value per image, ``float64 [B]``; average them yourself (use
  ``nanmean``: FG-ARI is NaN for an image with no foreground pixel, mBO/mIoU for an image with no
  object).

ARI on soft masks uses the expected contingency table ``n_ij = Σ_p t_ip · m_jp`` (as the slot
attention code and OCL do): it
rewards confident masks, and for very soft masks it is no longer bounded below by the hard-label
ARI's expectation of 0 (use argmax labels when that matters); on hard masks it is exactly scikit-learn's ``adjusted_rand_score`` (including
its convention that two single-cluster or two all-singleton partitions score 1). mBO and mIoU work
on hard masks: soft predicted masks are turned into labels by argmax over K first.
"""
from __future__ import annotations

import numpy as np
import torch


def _as_tensor(name: str, x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.dtype == torch.bool:
        raise ValueError(f"{name} must be integer labels [B, *S] or floating masks [B, K, *S], got dtype bool")
    return x


def _to_masks(name: str, x, spatial: tuple[int, ...] | None = None) -> torch.Tensor:
    """Integer labels ``[B, *S]`` or masks ``[B, K, *S]`` → float64 masks ``[B, K, P]``."""
    x = _as_tensor(name, x)
    if x.is_floating_point():
        if x.ndim < 3:
            raise ValueError(f"{name}: floating masks must have shape [B, K, *S], got {tuple(x.shape)}")
        if spatial is not None and tuple(x.shape[2:]) != spatial:
            raise ValueError(f"{name}: masks [B, K, *S] must have S = {spatial}, got shape {tuple(x.shape)}")
        return x.detach().to(torch.float64).flatten(2)
    if x.ndim < 2:
        raise ValueError(f"{name}: integer labels must have shape [B, *S], got {tuple(x.shape)}")
    if spatial is not None and tuple(x.shape[1:]) != spatial:
        raise ValueError(f"{name}: labels [B, *S] must have S = {spatial}, got shape {tuple(x.shape)}")
    x = x.detach().long().flatten(1)
    if x.numel() and int(x.min()) < 0:
        raise ValueError(f"{name}: labels must be >= 0, got min {int(x.min())}")
    k = int(x.max()) + 1 if x.numel() else 1
    return torch.nn.functional.one_hot(x, k).to(torch.float64).transpose(1, 2)


def _spatial(name: str, x) -> tuple[int, ...]:
    x = _as_tensor(name, x)
    return tuple(x.shape[2:]) if x.is_floating_point() else tuple(x.shape[1:])


def _comb2(x: torch.Tensor) -> torch.Tensor:
    return x * (x - 1) / 2


def adjusted_rand_index(true, pred, *, foreground_only: bool = False, background: int = 0) -> torch.Tensor:
    """ARI between two segmentations, per image.

    Args:
        true: ground truth, integer labels ``[B, *S]`` or masks ``[B, Kt, *S]``.
        pred: prediction, integer labels ``[B, *S]`` or (soft) masks ``[B, K, *S]``.
        foreground_only: score only the pixels whose ground truth is not ``background`` (FG-ARI).
            Needs ``true`` as integer labels.
        background: the background label of ``true``.

    Returns:
        ``float64 [B]``; NaN where no pixel is scored.
    """
    spatial = _spatial("true", true)
    t = _to_masks("true", true)
    p = _to_masks("pred", pred, spatial)
    if t.shape[0] != p.shape[0]:
        raise ValueError(f"true and pred must have the same batch size, got {t.shape[0]} and {p.shape[0]}")
    if foreground_only:
        tl = _as_tensor("true", true)
        if tl.is_floating_point():
            raise ValueError("foreground_only=True needs true as integer labels [B, *S]")
        keep = (tl.flatten(1) != background).to(torch.float64)  # [B, P]
        if background < t.shape[1]:
            t = t.clone()
            t[:, background] = 0
    else:
        keep = torch.ones(t.shape[0], t.shape[2], dtype=torch.float64)
    n_ij = torch.einsum("bip,bjp,bp->bij", t, p, keep)
    a, b = n_ij.sum(2), n_ij.sum(1)
    n = keep.sum(1)
    index = _comb2(n_ij).sum((1, 2))
    sa, sb = _comb2(a).sum(1), _comb2(b).sum(1)
    expected = sa * sb / _comb2(n).clamp_min(1e-12)
    maximum = (sa + sb) / 2
    denom = maximum - expected
    ari = (index - expected) / torch.where(denom.abs() < 1e-12, torch.ones_like(denom), denom)
    ari = torch.where(denom.abs() < 1e-12, torch.ones_like(ari), ari)  # both trivial partitions: 1
    return torch.where(n > 0, ari, torch.full_like(ari, float("nan")))


def fg_ari(true, pred, *, background: int = 0) -> torch.Tensor:
    """Foreground ARI per image, ``float64 [B]``: :func:`adjusted_rand_index` over non-background
    pixels. ``true``: integer labels ``[B, *S]``; ``pred``: labels ``[B, *S]`` or masks ``[B, K, *S]``."""
    return adjusted_rand_index(true, pred, foreground_only=True, background=background)


def _hard_labels(name: str, x) -> torch.Tensor:
    x = _as_tensor(name, x)
    if x.is_floating_point():
        if x.ndim < 3:
            raise ValueError(f"{name}: floating masks must have shape [B, K, *S], got {tuple(x.shape)}")
        return x.detach().argmax(1).flatten(1)
    if x.ndim < 2:
        raise ValueError(f"{name}: integer labels must have shape [B, *S], got {tuple(x.shape)}")
    return x.detach().long().flatten(1)


def _iou_matrices(true, pred, background: int):
    """Per image: IoU ``[objects, predicted segments]`` (numpy), objects = non-background GT labels."""
    spatial = _spatial("true", true)
    if _spatial("pred", pred) != spatial:
        raise ValueError(f"pred must have spatial shape {spatial}, got {_spatial('pred', pred)}")
    t = _hard_labels("true", true)
    p = _hard_labels("pred", pred)
    if t.shape[0] != p.shape[0]:
        raise ValueError(f"true and pred must have the same batch size, got {t.shape[0]} and {p.shape[0]}")
    out = []
    for ti, pi in zip(t, p):
        objects = [int(v) for v in torch.unique(ti) if int(v) != background]
        segments = torch.unique(pi)
        tm = torch.stack([ti == v for v in objects]).double() if objects else torch.zeros(0, ti.numel(), dtype=torch.float64)
        pm = torch.stack([pi == v for v in segments]).double()
        inter = tm @ pm.T
        union = tm.sum(1, keepdim=True) + pm.sum(1)[None] - inter
        out.append((inter / union.clamp_min(1)).numpy())
    return out


def mean_best_overlap(true, pred, *, background: int = 0) -> torch.Tensor:
    """mBO per image, ``float64 [B]``: for every ground-truth object, the best IoU with any predicted
    segment, averaged over the image's objects (background excluded); NaN for an image without
    objects. ``true``: labels ``[B, *S]``; ``pred``: labels ``[B, *S]`` or masks ``[B, K, *S]``
    (argmax over K)."""
    vals = [m.max(1).mean() if m.shape[0] else float("nan") for m in _iou_matrices(true, pred, background)]
    return torch.tensor(vals, dtype=torch.float64)


def matched_miou(true, pred, *, background: int = 0) -> torch.Tensor:
    """mIoU per image with Hungarian matching, ``float64 [B]``: ground-truth objects and predicted
    segments are matched one-to-one to maximise the total IoU (``scipy.optimize.linear_sum_assignment``);
    the matched IoUs are summed and divided by the number of objects (an object left unmatched,
    when there are fewer segments than objects, counts 0). NaN for an image without objects."""
    from scipy.optimize import linear_sum_assignment  # noqa: PLC0415

    vals = []
    for m in _iou_matrices(true, pred, background):
        if m.shape[0] == 0:
            vals.append(float("nan"))
            continue
        r, c = linear_sum_assignment(m, maximize=True)
        vals.append(float(m[r, c].sum() / m.shape[0]))
    return torch.tensor(vals, dtype=torch.float64)


def summarize(true, pred, *, background: int = 0) -> dict:
    """``{"fg_ari", "ari", "mbo", "miou"}``: the nan-means over the batch of the four metrics."""
    return {
        "fg_ari": float(np.nanmean(fg_ari(true, pred, background=background).numpy())),
        "ari": float(np.nanmean(adjusted_rand_index(true, pred).numpy())),
        "mbo": float(np.nanmean(mean_best_overlap(true, pred, background=background).numpy())),
        "miou": float(np.nanmean(matched_miou(true, pred, background=background).numpy())),
    }
