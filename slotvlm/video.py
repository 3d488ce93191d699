"""Video runtime: decoding at a target frame rate, CLIP pre-processing, slow/fast pooling.

Quick use::

    from slotvlm.video import load_video, preprocess
    frames, times = load_video("clip.mp4", fps=1.0)   # uint8 [T, H, W, 3], float64 [T] seconds
    pixels = preprocess(frames)                        # float32 [T, 3, 224, 224], CLIP-normalised

Decoding uses PyAV; pre-processing and pooling are C++ ops of ``slotvlm._C``
(``torch.ops.slotvlm.clip_preprocess`` / ``slowfast_pool``). ``preprocess`` gives the same numbers
as transformers' ``CLIPImageProcessor`` for ``openai/clip-vit-large-patch14`` (bit-identical on
this project's tests).
"""
from __future__ import annotations

import functools
import math
import os
from fractions import Fraction

import numpy as np
import torch

from slotvlm._ext import ops
from slotvlm.ops.video_ref import (
    check_slowfast_args,
    normalize_table,
    resample_taps,
    shortest_edge_size,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "VideoError",
    "load_video",
    "load_videos",
    "preprocess",
    "sample_fps_indices",
    "segment_midpoints",
    "slowfast_pool",
    "uniform_indices",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Gaps between sample times longer than this are skipped by seeking (see _decode_at).
_SEEK_GAP_S = 4.0
# Plan the kept frames from the packets and skip decoding unreferenced frames (_decode_planned).
_SKIP_NONREF = os.environ.get("SLOTVLM_VIDEO_SKIP_NONREF", "1") != "0"

# Container formats that FFmpeg opens but that hold no real video: still images, and "tty"
# (FFmpeg renders any text file as ANSI art).
_NOT_VIDEO_FORMATS = {"image2", "image2pipe", "tty"}


class VideoError(ValueError):
    """A file that is not a decodable video: corrupt, truncated, empty, or not a video at all.
    The message starts with the file name."""


# ------------------------------------------------------------------------------------------------
# Frame-index sampling (C++ ops in csrc/cpu/sampling.cpp)
# ------------------------------------------------------------------------------------------------
def _int_arg(op: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{op}: {name} must be an int, got {value!r}")
    return int(value)


def _num_arg(op: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating, Fraction)):
        raise ValueError(f"{op}: {name} must be a number, got {value!r}")
    return float(value)


def uniform_indices(num_frames: int, k: int, allow_repeat: bool = False) -> torch.Tensor:
    """``k`` frame indices spread uniformly over ``[0, num_frames - 1]``, first and last included
    (``k == 1`` gives the middle frame). Returns int64 ``[k]``. With ``allow_repeat`` ``k`` may
    exceed ``num_frames`` (frames repeat); otherwise that is a ValueError.

    >>> uniform_indices(10, 4).tolist()
    [0, 3, 6, 9]
    """
    return ops.uniform_indices(
        _int_arg("uniform_indices", "num_frames", num_frames), _int_arg("uniform_indices", "k", k), bool(allow_repeat)
    )


def segment_midpoints(num_frames: int, k: int, allow_repeat: bool = False) -> torch.Tensor:
    """The middle frame of each of ``k`` equal segments of ``[0, num_frames)``: int64 ``[k]``,
    ``floor((2i + 1) * num_frames / (2k))``.

    >>> segment_midpoints(10, 2).tolist()
    [2, 7]
    """
    return ops.segment_midpoints(
        _int_arg("segment_midpoints", "num_frames", num_frames),
        _int_arg("segment_midpoints", "k", k),
        bool(allow_repeat),
    )


def sample_fps_indices(num_frames: int, native_fps: float, target_fps: float = 1.0, max_frames: int | None = None) -> torch.Tensor:
    """Indices of the frames to keep when a constant-rate video of ``num_frames`` frames at
    ``native_fps`` is sampled at ``target_fps``: the frame nearest to each ``t = i / target_fps``
    inside the clip. With ``max_frames``, at most that many, spread uniformly. int64 ``[n]``.
    (``load_video`` samples by timestamps instead, which also handles variable frame rates.)

    >>> sample_fps_indices(100, 25.0, 1.0).tolist()
    [0, 25, 50, 75]
    """
    mf = -1 if max_frames is None else _int_arg("sample_fps_indices", "max_frames", max_frames)
    if max_frames is not None and mf <= 0:
        raise ValueError(f"sample_fps_indices: max_frames must be a positive int or None, got {max_frames!r}")
    return ops.sample_fps_indices(
        _int_arg("sample_fps_indices", "num_frames", num_frames),
        _num_arg("sample_fps_indices", "native_fps", native_fps),
        _num_arg("sample_fps_indices", "target_fps", target_fps),
        mf,
    )


# ------------------------------------------------------------------------------------------------
# Slow/fast pooling (C++ on CPU, the torch reference on other devices)
# ------------------------------------------------------------------------------------------------
# The CUDA kernel, the fake kernels and the backward of slowfast_pool live in slotvlm/_register.py,
# which the extension's module init imports: they exist whenever the op does.
# clip_preprocess's CUDA kernel is clip_preprocess_triton below, registered there too.


@functools.lru_cache(maxsize=64)
def _taps(in_size: int, out_size: int, out0: int, count: int, device: str):
    return tuple(t.to(device) for t in resample_taps(in_size, out_size, out0, count))


@functools.lru_cache(maxsize=16)
def _lut(mean: tuple, std: tuple, scale: float, dtype: torch.dtype, device: str) -> torch.Tensor:
    return normalize_table(mean, std, scale).to(device=device, dtype=dtype)


def clip_preprocess_triton(frames: torch.Tensor, size: int, crop_size: int, mean, std, scale: float,
                           dtype: torch.dtype) -> torch.Tensor:
    """The GPU path of ``torch.ops.slotvlm.clip_preprocess`` (registered for CUDA tensors): the
    Triton kernels of ``kernels/clip_preprocess.py``, the same integer arithmetic as the C++ op, so
    the output is bit-identical to it. uint8 ``[T, H, W, 3]`` → ``[T, 3, crop_size, crop_size]`` in
    ``dtype``, on the frames' device (CPU tensors only under ``TRITON_INTERPRET=1``)."""
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[3] != 3:
        raise ValueError(f"clip_preprocess: frames must be a uint8 tensor of shape [T, H, W, 3], got "
                         f"{getattr(frames, 'shape', type(frames).__name__)}")
    if frames.dtype != torch.uint8:
        raise ValueError(f"clip_preprocess: frames must have dtype uint8, got {frames.dtype}")
    T, H, W, _ = frames.shape
    if H <= 0 or W <= 0:
        raise ValueError(f"clip_preprocess: frames must have H > 0 and W > 0, got shape {tuple(frames.shape)}")
    if not 0 < size <= 16384:
        raise ValueError(f"clip_preprocess: size must be in [1, 16384], got {size}")
    if not 0 < crop_size <= size:
        raise ValueError(f"clip_preprocess: crop_size must be in [1, size={size}], got {crop_size}")
    if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise ValueError(f"clip_preprocess: dtype must be float32, float64, float16 or bfloat16, got {dtype}")
    if len(mean) != 3 or len(std) != 3 or any(not math.isfinite(s) or s == 0 for s in std):
        raise ValueError(f"clip_preprocess: mean and std must have 3 values, std finite and non-zero, got {mean}, {std}")
    rh, rw = shortest_edge_size(H, W, size)
    if rh < crop_size or rw < crop_size:
        raise ValueError(f"clip_preprocess: frames of size {H}x{W} resize to {rh}x{rw}, smaller than crop_size={crop_size}")
    from slotvlm.kernels.clip_preprocess import clip_resample_fwd  # noqa: PLC0415  (imports triton)

    dev = str(frames.device)
    top, left = (rh - crop_size) // 2, (rw - crop_size) // 2
    th = _taps(W, rw, left, crop_size, dev)
    tv = _taps(H, rh, top, crop_size, dev)
    row0 = int(tv[0][0])
    rows = int(tv[0][-1] + tv[1][-1]) - row0
    lut = _lut(tuple(float(m) for m in mean), tuple(float(s) for s in std), float(scale), dtype, dev)
    return clip_resample_fwd(frames, th, tv, row0, rows, lut)



def slowfast_pool(features: torch.Tensor, num_slow: int = 8, stride: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Split per-frame features into the Slot-VLM slow and fast streams.

    Args:
        features: ``[B, T, H, W, D]`` float32/float64/bfloat16/float16 (e.g. CLIP tokens ``16 x 16``).
        num_slow: t_d, frames kept for the slow (object) stream, chosen with
            ``uniform_indices(T, num_slow, allow_repeat=True)`` (so ``T < num_slow`` repeats frames).
        stride: s, average-pooling window and stride over (H, W) for the fast (event) stream.

    Returns:
        ``slow [B, num_slow, H, W, D]`` and ``fast [B, T, H/s, W/s, D]``, in the input dtype.
        Differentiable with respect to ``features``.
    """
    num_slow = _int_arg("slowfast_pool", "num_slow", num_slow)
    stride = _int_arg("slowfast_pool", "stride", stride)
    check_slowfast_args(features, num_slow, stride)
    return ops.slowfast_pool(features, num_slow, stride)


# ------------------------------------------------------------------------------------------------
# CLIP pre-processing
# ------------------------------------------------------------------------------------------------
def preprocess(
    frames,
    size: int = 224,
    dtype: torch.dtype = torch.float32,
    *,
    crop_size: int | None = None,
    mean=CLIP_MEAN,
    std=CLIP_STD,
) -> torch.Tensor:
    """CLIP pre-processing of video frames, as transformers' ``CLIPImageProcessor`` does it.

    Shortest side resized to ``size`` with PIL's antialiased bicubic filter, centre crop of
    ``crop_size`` (default ``size``), ``x / 255``, then ``(x - mean) / std`` per channel — one fused,
    multithreaded C++ op that computes only the cropped pixels.

    Args:
        frames: uint8 ``[T, H, W, 3]`` RGB (torch tensor or numpy array, any strides). CPU: the
            fused C++ op; CUDA: Triton kernels on the GPU (same bytes), no copy to the host.
        size: the shortest side after resizing (224 for CLIP ViT-L/14).
        dtype: output dtype (float32, float64, float16 or bfloat16).

    Returns:
        ``[T, 3, crop_size, crop_size]`` on the input's device.
    """
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise ValueError(f"preprocess: frames must be a uint8 tensor [T, H, W, 3], got {type(frames).__name__}")
    size = _int_arg("preprocess", "size", size)
    crop = size if crop_size is None else _int_arg("preprocess", "crop_size", crop_size)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"preprocess: dtype must be a torch.dtype, got {dtype!r}")
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if frames.is_cuda:  # the Triton kernels, no round trip through the CPU
        return ops.clip_preprocess(frames, size, crop, mean, std, 1.0 / 255.0, dtype)
    device = frames.device
    out = ops.clip_preprocess(frames.cpu(), size, crop, mean, std, 1.0 / 255.0, dtype)
    return out.to(device)


# ------------------------------------------------------------------------------------------------
# Decoding
# ------------------------------------------------------------------------------------------------
def _rate(stream) -> float | None:
    for r in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if r and float(r) > 0 and math.isfinite(float(r)):
            return float(r)
    return None


def _duration(container, stream) -> float | None:
    """The video's length in seconds from the metadata, or None."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and container.duration > 0:
        return container.duration / 1_000_000
    rate = _rate(stream)
    if stream.frames and rate:
        return stream.frames / rate
    return None


def _demuxed_duration(path: str) -> float | None:
    """The end time of the last video packet, reading packets only (no decoding)."""
    import av

    end = None
    with av.open(path) as c:
        s = c.streams.video[0]
        first = None
        for p in c.demux(s):
            if p.pts is None or p.time_base is None:
                continue
            t0 = float(p.pts * p.time_base)
            first = t0 if first is None else min(first, t0)
            t1 = t0 + float((p.duration or 0) * p.time_base)
            end = t1 if end is None else max(end, t1)
    return None if end is None else end - (first or 0.0)


def _target_times(duration: float | None, fps: float, max_frames: int | None) -> list[float] | None:
    """Sample times i / fps inside [0, duration), at most max_frames of them (uniformly); None when
    the duration is unknown (then every i / fps until the end is a target)."""
    if duration is None:
        return None
    n = max(1, math.ceil(duration * fps - 1e-9))
    if max_frames is not None and n > max_frames:
        return [int(i) / fps for i in uniform_indices(n, max_frames).tolist()]
    return [i / fps for i in range(n)]


def load_video(path, fps: float = 1.0, max_frames: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a video at ``fps`` frames per second.

    For each sample time ``t = i / fps`` (seconds from the first frame) inside the clip, keeps the
    frame whose timestamp is nearest to ``t``; timestamps come from the frames' pts, so variable
    frame rates and missing durations are handled. Decoding stops after the last frame needed, and
    only the kept frames are converted to RGB. With ``max_frames``, at most that many frames,
    spread uniformly over the clip.

    Args:
        path: a video file (str or PathLike).
        fps: target frames per second (> 0, at most the video's native rate).
        max_frames: optional cap on the number of frames.

    Returns:
        ``frames`` uint8 ``[T, H, W, 3]`` RGB and ``timestamps`` float64 ``[T]`` (seconds from the
        first frame, increasing).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        VideoError: the file is empty, corrupt, truncated, or not a video (message names the file).
        ValueError: bad ``fps`` / ``max_frames``, or ``fps`` above the video's native rate.
    """
    import av

    if not isinstance(path, (str, bytes, os.PathLike)):
        raise ValueError(f"load_video: path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fsdecode(os.fspath(path))
    fps = _num_arg("load_video", "fps", fps)
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"load_video: fps must be a positive finite number, got {fps!r}")
    if max_frames is not None and _int_arg("load_video", "max_frames", max_frames) <= 0:
        raise ValueError(f"load_video: max_frames must be a positive int or None, got {max_frames!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(2, "video file not found", path)
    if os.path.isdir(path):
        raise VideoError(f"{path}: is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: empty file (0 bytes), not a video")

    try:
        container = av.open(path, metadata_errors="ignore")
    except av.FFmpegError as exc:
        raise VideoError(f"{path}: not a readable video file ({exc.strerror or exc})") from exc
    with container:
        if container.format.name in _NOT_VIDEO_FORMATS or container.format.name.endswith("_pipe"):
            raise VideoError(f"{path}: is not a video (FFmpeg reads it as {container.format.name!r})")
        if not container.streams.video:
            raise VideoError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        native = _rate(stream)
        if native is not None and fps > native * (1 + 1e-6):
            raise ValueError(f"load_video: fps={fps} is above the native frame rate {native:g} of {path}")
        duration = _duration(container, stream)
        if duration is None and max_frames is not None:
            try:
                duration = _demuxed_duration(path)
            except av.FFmpegError:
                duration = None
        targets = _target_times(duration, fps, max_frames)
        if _SKIP_NONREF and targets is not None and max(b - a for a, b in zip([0.0] + targets, targets)) <= _SEEK_GAP_S:
            planned = _decode_planned(path, container, stream, targets, native)
            if planned is not None:
                return planned
        return _decode_at(path, container, stream, targets, fps, native, max_frames)


def _frame_plan(path, targets, native):
    """Which frames to keep, from the packets' timestamps alone (demuxing, no decoding): the
    ``pts`` of the frame nearest to each target (ties: the earlier), the same choice as
    :func:`_decode_at` makes while decoding. None when the file's timestamps do not allow a plan
    (missing, duplicated, discarded or corrupt packets, or frames ending well before the targets)."""
    import av

    pts = []
    with av.open(path, metadata_errors="ignore") as c:
        s = c.streams.video[0]
        tb = s.time_base
        for p in c.demux(s):
            if p.size == 0 and p.pts is None:
                continue  # the flush packet at the end
            if p.pts is None or p.is_corrupt or getattr(p, "is_discard", False):
                return None
            pts.append(p.pts)
    if not pts or tb is None:
        return None
    order = sorted(pts)
    if len(set(order)) != len(order):
        return None
    times = [float(q * tb) for q in order]  # as PyAV's frame.time
    times = [t - times[0] for t in times]
    step = 1.0 / native if native else 0.0
    if targets[-1] > times[-1] + max(1.0, 2 * step):
        return None  # truncated: _decode_at finds out and says so
    keep, j, n = [], 0, len(times)
    for tt in targets:
        while j < n and times[j] < tt - 1e-9:
            j += 1
        if j == n:
            if tt < times[-1] + step - 1e-9 and (not keep or keep[-1] != n - 1):
                keep.append(n - 1)
            break
        k = j - 1 if j > 0 and tt - times[j - 1] <= times[j] - tt else j
        if not keep or keep[-1] != k:
            keep.append(k)
    return [order[k] for k in keep], [times[k] for k in keep]


def _decode_planned(path, container, stream, targets, native):
    """Decode only what the kept frames need: every packet is sent to the decoder, but frames that
    no other frame references (``skip_frame = NONREF``: B-frames in most H.264/H.265 files) are
    not decoded unless they are kept. The kept frames are bit-identical to a full decode (no
    decoded frame depends on a skipped one). Returns None (the caller decodes everything) if the
    plan cannot be made or the decoder did not give every planned frame."""
    import av

    try:
        plan = _frame_plan(path, targets, native)
        if plan is None:
            return None
        want, times = plan
        wanted = set(want)
        got: dict[int, np.ndarray] = {}
        size = None
        cc = stream.codec_context
        for packet in container.demux(stream):
            if packet.pts is not None:
                cc.skip_frame = "DEFAULT" if packet.pts in wanted else "NONREF"
            for frame in cc.decode(packet):
                if frame.pts in wanted and frame.pts not in got:
                    if size is None:
                        size = (frame.height, frame.width)
                    if (frame.height, frame.width) != size:  # resolution change inside the stream
                        frame = frame.reformat(width=size[1], height=size[0])
                    got[frame.pts] = frame.to_ndarray(format="rgb24")
            if len(got) == len(wanted):
                break
        cc.skip_frame = "DEFAULT"
    except av.FFmpegError:
        return None
    if len(got) != len(wanted):
        return None
    return torch.from_numpy(np.stack([got[q] for q in want])), torch.tensor(times, dtype=torch.float64)


def load_videos(paths, fps: float = 1.0, max_frames: int | None = None, *, size: int | None = None,
                workers: int = 2, return_exceptions: bool = False):
    """Decode several videos concurrently, in order: a batched loader for ``extract`` / ``predict``.

    Each video is read by :func:`load_video` (and, with ``size``, pre-processed by
    :func:`preprocess`) in a pool of ``workers`` threads; FFmpeg and the C++ op run without the
    GIL, so on short clips, where one video's decode does not keep every core busy, the pool
    overlaps them. At most ``workers`` videos are in flight ahead of the consumer.

    Args:
        paths: video files.
        fps, max_frames: as for :func:`load_video`.
        size: if given, yield ``preprocess(frames, size=size)`` (``[T, 3, size, size]`` float32)
            instead of ``(frames, timestamps)``.
        workers: threads (1: one after the other, in this thread).
        return_exceptions: yield a failing video's exception instead of raising it.

    Returns:
        an iterator over the paths, in order, of ``(frames uint8 [T, H, W, 3], timestamps float64
        [T])``, or the pixel values with ``size``, or the exception with ``return_exceptions``.
    """
    workers = _int_arg("load_videos", "workers", workers)
    if workers <= 0:
        raise ValueError(f"load_videos: workers must be a positive int, got {workers}")
    if size is not None:
        size = _int_arg("load_videos", "size", size)
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise ValueError(f"load_videos: paths must be a list of video files, got a single path {paths!r}")
    return _iter_videos(list(paths), fps, max_frames, size, workers, return_exceptions)


def _iter_videos(paths, fps, max_frames, size, workers, return_exceptions):
    import concurrent.futures as cf  # noqa: PLC0415
    from collections import deque  # noqa: PLC0415

    def one(path):
        frames, times = load_video(path, fps=fps, max_frames=max_frames)
        return preprocess(frames, size=size) if size is not None else (frames, times)

    def result(fut_or_path):
        try:
            return fut_or_path.result() if isinstance(fut_or_path, cf.Future) else one(fut_or_path)
        except Exception as exc:  # noqa: BLE001
            if return_exceptions:
                return exc
            raise

    if workers == 1 or len(paths) <= 1:
        for p in paths:
            yield result(p)
        return
    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="load_videos") as pool:
        pending = deque()
        it = iter(paths)
        for p in it:
            pending.append(pool.submit(one, p))
            if len(pending) >= workers:
                break
        try:
            while pending:
                fut = pending.popleft()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(one, nxt))
                yield result(fut)
        finally:
            for f in pending:
                f.cancel()


def _decode_at(path, container, stream, targets, fps, native, max_frames):
    import av

    times: list[float] = []
    arrays: list[np.ndarray] = []  # RGB of the kept frames, converted as soon as they are chosen
    size = None  # (height, width) of the first kept frame; later frames are scaled to it
    last_kept = None  # the last frame kept, so that a frame is never kept twice

    def take(t, frame):
        nonlocal last_kept, size
        if frame is last_kept:
            return
        last_kept = frame
        if size is None:
            size = (frame.height, frame.width)
        if (frame.height, frame.width) != size:  # resolution change inside the stream
            frame = frame.reformat(width=size[1], height=size[0])
        times.append(t)
        arrays.append(frame.to_ndarray(format="rgb24"))

    def target(i):
        if targets is None:
            return i / fps
        return targets[i] if i < len(targets) else None

    ti = 0
    t_first = None
    prev = None  # (time, frame) of the previous decoded frame
    n_decoded = 0
    step = 1.0 / native if native else 0.0
    done = False
    # Long gaps between sample times (max_frames on a long video) are skipped by seeking to the
    # keyframe before the next sample, when the file has timestamps and seeking makes progress.
    can_seek = stream.time_base is not None
    try:
        frames = container.decode(stream)
        while not done:
            seek_from = None
            for frame in frames:
                n_decoded += 1
                if frame.pts is not None and frame.time is not None:
                    t_abs = float(frame.time)
                else:  # no timestamp: continue from the previous frame at the native rate
                    can_seek = False
                    t_abs = (prev[0] + (t_first or 0.0) + step) if prev else 0.0
                if t_first is None:
                    t_first = t_abs
                t = t_abs - t_first
                if seek_from is not None:
                    if t <= seek_from:  # the keyframe was not past where we were: stop seeking
                        can_seek = False
                    seek_from = None
                if prev is not None and t < prev[0]:
                    t = prev[0]  # out-of-order timestamps in a broken file: keep time monotone
                tt = target(ti)
                while tt is not None and t >= tt - 1e-9:
                    # The nearest of the previous frame (before tt) and this one (at or after tt).
                    if prev is not None and tt - prev[0] <= t - tt:
                        take(*prev)
                    else:
                        take(t, frame)
                    ti += 1
                    tt = target(ti)
                if tt is None:
                    done = True
                    break
                prev = (t, frame)
                if can_seek and tt - t > _SEEK_GAP_S:
                    try:
                        container.seek(int(Fraction(tt + t_first) / stream.time_base), backward=True, stream=stream)
                    except av.FFmpegError:
                        can_seek = False  # not seekable: keep decoding sequentially
                        continue
                    frames = container.decode(stream)
                    seek_from, prev = t, None
                    break
            else:
                break  # end of stream
    except av.FFmpegError as exc:
        where = f" after {prev[0]:.2f} s" if prev else ""
        raise VideoError(f"{path}: corrupt or truncated video, decoding failed{where} ({exc.strerror or exc})") from exc
    if n_decoded == 0:
        raise VideoError(f"{path}: no decodable video frames (empty, corrupt or truncated)")
    if not done and prev is not None:
        # End of stream with targets left: the last frame covers those within one frame of it.
        last_t, last_frame = prev
        tt = target(ti)
        if targets is not None and tt is not None and targets[-1] > last_t + max(1.0, 2 * step):
            raise VideoError(
                f"{path}: truncated or corrupt video, frames stop at {last_t:.2f} s but the file says "
                f"it lasts more than {targets[-1]:.2f} s"
            )
        if tt is not None and tt < last_t + step - 1e-9:
            take(last_t, last_frame)
    if not arrays:
        raise VideoError(f"{path}: truncated or corrupt video, no frame near the sample times (frames stop at {prev[0]:.2f} s)")
    if targets is None and max_frames is not None and len(arrays) > max_frames:
        pick = uniform_indices(len(arrays), max_frames).tolist()
        arrays, times = [arrays[i] for i in pick], [times[i] for i in pick]
    return torch.from_numpy(np.stack(arrays)), torch.tensor(times, dtype=torch.float64)
