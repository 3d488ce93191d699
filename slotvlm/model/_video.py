"""Video decoding for the model's convenience paths (``answer``, CLI chat/visualize).

Uses the video runtime ``slotvlm.video`` (``load_video`` / ``preprocess``) when present; until that
module is merged, a minimal PyAV + torch fallback with the same contract.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_video(path: str, fps: float = 1.0, max_frames: int | None = None):
    """``path`` → ``(frames uint8 [T, H, W, 3], timestamps float64 [T])`` sampled at ``fps``."""
    try:
        from ..video import load_video as impl  # noqa: PLC0415
    except ImportError:
        impl = _load_video_av
    return impl(path, fps=fps, max_frames=max_frames)


def preprocess(frames, size: int = 224, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``frames uint8 [T, H, W, 3]`` → CLIP-normalised ``[T, 3, size, size]``."""
    try:
        from ..video import preprocess as impl  # noqa: PLC0415
    except ImportError:
        impl = _preprocess_torch
    return impl(frames, size=size, dtype=dtype)


def _load_video_av(path: str, fps: float = 1.0, max_frames: int | None = None):
    import av  # noqa: PLC0415

    if not (isinstance(fps, (int, float)) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    try:
        container = av.open(str(path))
    except (OSError, av.FFmpegError) as exc:
        raise ValueError(f"cannot open video {path!r}: {exc}") from exc
    frames, times = [], []
    with container:
        if not container.streams.video:
            raise ValueError(f"video {path!r} has no video stream")
        next_t = 0.0
        for frame in container.decode(video=0):
            t = float(frame.time) if frame.time is not None else len(times) / fps
            if t + 1e-6 >= next_t:
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(t)
                next_t += 1.0 / fps
                while next_t <= t + 1e-6:
                    next_t += 1.0 / fps
    if not frames:
        raise ValueError(f"video {path!r} has no decodable frames")
    if max_frames is not None and len(frames) > max_frames:
        keep = np.round(np.linspace(0, len(frames) - 1, max_frames)).astype(int)
        frames, times = [frames[i] for i in keep], [times[i] for i in keep]
    return np.stack(frames), np.asarray(times, dtype=np.float64)


def _preprocess_torch(frames, size: int = 224, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(frames)).permute(0, 3, 1, 2).float() / 255.0  # [T, 3, H, W]
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top : top + size, left : left + size]
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).to(dtype)
