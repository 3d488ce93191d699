"""Plain-PyTorch references of the video ops in ``slotvlm._C`` (csrc/cpu/video.cpp).

``slowfast_pool_ref`` is the specification of ``torch.ops.slotvlm.slowfast_pool`` and is also the
implementation registered for CUDA tensors. The reference of ``clip_preprocess`` is transformers'
``CLIPImageProcessor`` itself (see tests/test_video_ops.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def uniform_indices_ref(num_frames: int, k: int) -> torch.Tensor:
    """``k`` indices spread uniformly over ``[0, num_frames - 1]`` (first and last included,
    rounded half away from zero; one index picks the middle frame). Repeats when k > num_frames."""
    if k == 1:
        return torch.tensor([(num_frames - 1) // 2], dtype=torch.long)
    step = (num_frames - 1) / (k - 1)
    return torch.tensor([int(step * i + 0.5) for i in range(k)], dtype=torch.long)


def check_slowfast_args(features, num_slow: int, stride: int) -> None:
    """The argument checks of slowfast_pool, shared by every implementation (ValueError)."""
    if not isinstance(features, torch.Tensor):
        raise ValueError(f"slowfast_pool: features must be a torch.Tensor, got {type(features).__name__}")
    if features.dim() != 5:
        raise ValueError(f"slowfast_pool: features must have shape [B, T, H, W, D], got shape {tuple(features.shape)}")
    if features.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"slowfast_pool: features must be floating point (float32, float64, bfloat16, float16), got {features.dtype}"
        )
    if num_slow <= 0:
        raise ValueError(f"slowfast_pool: num_slow must be > 0, got {num_slow}")
    if num_slow > 2**20:
        raise ValueError(f"slowfast_pool: num_slow must be at most 2^20 = 1048576 frames, got {num_slow}")
    if stride <= 0:
        raise ValueError(f"slowfast_pool: stride must be > 0, got {stride}")
    _, T, H, W, _ = features.shape
    if T <= 0:
        raise ValueError(f"slowfast_pool: features must have T > 0 frames, got shape {tuple(features.shape)}")
    if H <= 0 or W <= 0 or H % stride or W % stride:
        raise ValueError(f"slowfast_pool: H and W must be positive multiples of stride={stride}, got H={H}, W={W}")


def slowfast_pool_ref(features: torch.Tensor, num_slow: int = 8, stride: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """features ``[B, T, H, W, D]`` -> (slow ``[B, num_slow, H, W, D]``, fast ``[B, T, H/s, W/s, D]``).

    slow: the frames ``uniform_indices(T, num_slow, allow_repeat=True)``; fast: ``stride x stride``
    average pooling over (H, W), accumulated in fp32 (fp64 for fp64 inputs).
    """
    check_slowfast_args(features, num_slow, stride)
    B, T, H, W, D = features.shape
    idx = uniform_indices_ref(T, num_slow).to(features.device)
    slow = features.index_select(1, idx).contiguous()
    acc = torch.float64 if features.dtype == torch.float64 else torch.float32
    x = features.reshape(B * T, H, W, D).permute(0, 3, 1, 2).to(acc)
    fast = F.avg_pool2d(x, kernel_size=stride, stride=stride)
    fast = fast.permute(0, 2, 3, 1).reshape(B, T, H // stride, W // stride, D).to(features.dtype).contiguous()
    return slow, fast


# ------------------------------------------------------------------------------------------------
# PIL's antialiased bicubic resampling coefficients (as in csrc/cpu/video.cpp), for the GPU path
# ------------------------------------------------------------------------------------------------
PRECISION_BITS = 22  # fixed-point bits of PIL's 8-bit resampling (32 - 8 - 2)


def _bicubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


def resample_taps(in_size: int, out_size: int, out0: int, count: int):
    """Taps of output positions ``[out0, out0 + count)`` of a resize from ``in_size`` to ``out_size``
    with PIL's antialiased bicubic filter: ``(first [count] int32, length [count] int32, weights
    [count, ksize] int32)``, the weights in 22-bit fixed point (zero past each ``length``). The same
    double-precision arithmetic as Pillow (and the C++ op), so the integers are identical."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    first = torch.zeros(count, dtype=torch.int32)
    length = torch.zeros(count, dtype=torch.int32)
    weights = torch.zeros(count, ksize, dtype=torch.int32)
    ss = 1.0 / filterscale
    for i in range(count):
        center = (out0 + i + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # int(): C-style truncation, as PIL
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [_bicubic((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        ww = 0.0
        for v in k:
            ww += v
        for x, v in enumerate(k):
            v = (v / ww if ww != 0.0 else v) * float(1 << PRECISION_BITS)
            weights[i, x] = int(-0.5 + v if v < 0 else 0.5 + v)
        first[i], length[i] = xmin, xmax
    return first, length, weights


def shortest_edge_size(h: int, w: int, size: int) -> tuple[int, int]:
    """transformers' shortest-edge rule: the short side becomes ``size``, the long side
    ``int(size * long / short)``."""
    if w <= h:
        return int(size * h / w), size
    return size, int(size * w / h)


def normalize_table(mean, std, scale: float = 1 / 255) -> torch.Tensor:
    """``[3, 256]`` float32: ``(float32(v * scale) - mean) / std`` in float32, per channel — the
    output of every uint8 value, with transformers' rescale/normalise arithmetic."""
    v = torch.arange(256, dtype=torch.float64) * scale
    m = torch.tensor([float(x) for x in mean], dtype=torch.float32).view(3, 1)
    s = torch.tensor([float(x) for x in std], dtype=torch.float32).view(3, 1)
    return (v.to(torch.float32).view(1, 256) - m) / s
