"""The CLIP feature cache: what the SlowFast slots need, computed once per video.

One safetensors file per video, ``CACHE/<video stem>.safetensors``, holding

* ``slow``  ``[num_slow, G, G, D]`` — the ``num_slow`` (8) frames chosen by
  ``uniform_indices(T, num_slow, allow_repeat=True)``, full resolution (G = 16 for ViT-L/14 at 224 px);
* ``fast``  ``[T, G/s, G/s, D]`` — every sampled frame average-pooled with stride s (4 → 4×4);
* ``timestamps`` float64 ``[T]`` (seconds) and ``slow_indices`` int64 ``[num_slow]``;

with the vision model, layer, fps and dtype in the file's metadata. Features are the vision tower's
``vision_layer`` hidden state (default -2, the penultimate layer) with the CLS token dropped.
These are exactly the inputs of ``SlotVLM.encode_features(slow=..., fast=...)``.

Size per video (ViT-L/14, D = 1024, stored in fp16 or bf16, 2 bytes per value)::

    slow: 8 × 16 × 16 × 1024 × 2 B = 4 MiB (fixed)
    fast: T × 4 × 4 × 1024 × 2 B  = 32 KiB per sampled frame (T = seconds at 1 fps)
    a 3-minute video (T = 180): 4 MiB + 5.6 MiB ≈ 9.6 MiB; 100k such videos ≈ 0.96 TB

(the full T × 16 × 16 feature map would be 0.5 MiB per frame, 90 MiB for the same video).

Writing is crash-safe: each file is written to a temporary name and renamed (``os.replace``), so a
killed run leaves either a complete file or none; a rerun skips the videos already present.
Videos that fail are recorded in ``CACHE/failures.jsonl`` and the run carries on. Each finished
video appends one line to ``CACHE/extracted.jsonl`` (video, rank, frames, seconds taken).
"""
from __future__ import annotations

import json
import os
import time
from typing import Sequence

import torch

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".webm", ".mov", ".m4v")
SUFFIX = ".safetensors"
FAILURES = "failures.jsonl"
EXTRACTED = "extracted.jsonl"
FORMAT_VERSION = "1"


# ---------------------------------------------------------------------------------------------- video
def _video_runtime():
    """``(load_video, preprocess, slowfast_pool)`` of the video runtime :mod:`slotvlm.video`."""
    from .. import video  # noqa: PLC0415

    return video.load_video, video.preprocess, video.slowfast_pool


def list_videos(videos: str | Sequence[str]) -> list[str]:
    """The video paths named by ``videos``: a folder (its video files, sorted), a text file with one
    path per line (relative paths are taken relative to the list's folder; ``#`` starts a comment),
    or a sequence of paths."""
    if not isinstance(videos, (str, os.PathLike)):
        return [str(v) for v in videos]
    videos = str(videos)
    if os.path.isdir(videos):
        names = sorted(n for n in os.listdir(videos) if n.lower().endswith(VIDEO_EXTENSIONS))
        return [os.path.join(videos, n) for n in names]
    if os.path.isfile(videos):
        base = os.path.dirname(os.path.abspath(videos))
        out = []
        with open(videos, encoding="utf-8") as f:
            for line in f:
                line = line.split("#", 1)[0].strip()
                if line:
                    out.append(line if os.path.isabs(line) else os.path.join(base, line))
        return out
    raise ValueError(f"videos must be a folder of videos or a text file listing them, got {videos!r} (not found)")


def video_key(path: str) -> str:
    """The cache name of a video: its file name without extension (``v_abc.mp4`` → ``v_abc``)."""
    return os.path.splitext(os.path.basename(str(path)))[0]


def cache_path(cache: str, key: str) -> str:
    return os.path.join(cache, key + SUFFIX)


# ---------------------------------------------------------------------------------------------- CLIP
class VisionEncoder:
    """A frozen ``CLIPVisionModel`` that maps ``pixel_values [T, 3, S, S]`` to ``[T, G, G, D]``.

    Args:
        vision: hub id or local path of a CLIP model (vision tower).
        device: default CUDA when available, else CPU. dtype: default bf16 on CUDA, fp32 on CPU.
        layer: which hidden state (default -2, the penultimate layer); the CLS token is dropped.
        batch_size: frames per forward pass.
    """

    def __init__(self, vision: str, device=None, dtype=None, layer: int = -2, batch_size: int = 64):
        from transformers import CLIPVisionModel  # noqa: PLC0415

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.dtype = dtype
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = batch_size
        self.layer = layer
        self.name = str(vision)
        from ..model.modeling import _dtype_kwarg  # noqa: PLC0415  ("dtype" or, before 4.56, "torch_dtype")

        model = CLIPVisionModel.from_pretrained(vision, **{_dtype_kwarg(): dtype}, attn_implementation="sdpa")
        self.model = model.to(self.device).eval().requires_grad_(False)
        cfg = self.model.config
        self.image_size = cfg.image_size
        self.grid = cfg.image_size // cfg.patch_size
        self.hidden = cfg.hidden_size

    @torch.inference_mode()
    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values [T, 3, S, S]`` → features ``[T, G, G, D]`` in the model's dtype, on its device."""
        out = []
        for chunk in pixel_values.split(self.batch_size):
            chunk = chunk.to(self.device, self.dtype, non_blocking=True)
            hs = self.model(pixel_values=chunk, output_hidden_states=True).hidden_states[self.layer]
            x = hs[:, 1:]  # drop CLS
            out.append(x.reshape(x.shape[0], self.grid, self.grid, x.shape[-1]))
        return torch.cat(out, 0)


# ---------------------------------------------------------------------------------------------- cache files
def save_features(path: str, slow: torch.Tensor, fast: torch.Tensor, timestamps, slow_indices,
                  metadata: dict | None = None, tmp_tag: str = "") -> None:
    """Write one cache file atomically: to ``<path>.<tmp_tag>.tmp``, then ``os.replace``."""
    from safetensors.torch import save_file  # noqa: PLC0415

    tensors = {
        "slow": slow.detach().to("cpu").contiguous(),
        "fast": fast.detach().to("cpu").contiguous(),
        "timestamps": torch.as_tensor(timestamps, dtype=torch.float64).contiguous(),
        "slow_indices": torch.as_tensor(slow_indices, dtype=torch.int64).contiguous(),
    }
    meta = {"format": "pt", "slotvlm_cache": FORMAT_VERSION}
    # Metadata is UTF-8 text: a file name that is not (bytes kept as surrogates) is written escaped.
    meta.update({k: str(v).encode("utf-8", "backslashreplace").decode("utf-8") for k, v in (metadata or {}).items()})
    tmp = f"{path}.{tmp_tag or os.getpid()}.tmp"
    try:
        if _utf8_path(tmp):
            save_file(tensors, tmp, metadata=meta)
        else:  # safetensors takes only UTF-8 paths; Python's open() takes any file name
            from safetensors.torch import save  # noqa: PLC0415

            with open(tmp, "wb") as f:
                f.write(save(tensors, metadata=meta))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_features(path: str, device="cpu") -> dict:
    """Read one cache file: ``{"slow" [t_d, G, G, D], "fast" [T, g, g, D], "timestamps" [T],
    "slow_indices" [t_d], "metadata": dict}``. Raises ``ValueError`` on a missing or corrupt file."""
    from safetensors import safe_open  # noqa: PLC0415

    try:
        if _utf8_path(path):
            with safe_open(path, framework="pt", device=str(device)) as f:
                out = {k: f.get_tensor(k) for k in f.keys()}
                out["metadata"] = dict(f.metadata() or {})
        else:  # a file name that is not UTF-8: read through Python's open()
            out = _load_bytes(path, device)
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"cannot read feature file {path!r}: {exc}") from exc
    for k in ("slow", "fast"):
        if k not in out:
            raise ValueError(f"feature file {path!r} has no {k!r} tensor")
    return out


def _utf8_path(path: str) -> bool:
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes of the file name, kept as surrogates by Python
        return False
    return True


def _load_bytes(path: str, device) -> dict:
    from safetensors.torch import load  # noqa: PLC0415

    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    out = {k: v.to(device) for k, v in load(data).items()}
    out["metadata"] = dict(header.get("__metadata__") or {})
    return out


class FeatureCache:
    """Read access to a cache folder by video id. ``"v_abc"`` and ``"abc"`` both find ``v_abc``'s
    features (VideoInstruct ids carry the ``v_`` prefix, ActivityNet-QA names do not)."""

    def __init__(self, directory: str):
        if not os.path.isdir(directory):
            raise ValueError(f"features must be a feature-cache folder, got {directory!r} (not a folder)")
        self.directory = directory
        self.keys = {n[: -len(SUFFIX)] for n in os.listdir(directory) if n.endswith(SUFFIX)}

    def resolve(self, video_id: str) -> str | None:
        for k in (video_id, f"v_{video_id}", video_id[2:] if video_id.startswith("v_") else None):
            if k is not None and k in self.keys:
                return k
        stem = video_key(video_id)  # a path or a name with extension
        return stem if stem in self.keys else None

    def __contains__(self, video_id: str) -> bool:
        return self.resolve(video_id) is not None

    def __len__(self) -> int:
        return len(self.keys)

    def load(self, video_id: str, device="cpu") -> dict:
        key = self.resolve(video_id)
        if key is None:
            raise ValueError(f"video_id {video_id!r} is not in the feature cache {self.directory!r}")
        return load_features(cache_path(self.directory, key), device=device)


# ---------------------------------------------------------------------------------------------- extraction
def _append_jsonl(path: str, record: dict) -> None:
    # One write() of a short line on an O_APPEND file: lines from concurrent ranks do not interleave.
    line = (json.dumps(record) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class _Decoded(torch.utils.data.Dataset):
    """Decodes + pre-processes one video per item (in DataLoader workers, overlapping CLIP)."""

    def __init__(self, paths, fps, max_frames, size):
        self.paths, self.fps, self.max_frames, self.size = list(paths), fps, max_frames, size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        path = self.paths[i]
        load_video, preprocess, _ = _video_runtime()
        try:
            frames, times = load_video(path, fps=self.fps, max_frames=self.max_frames)
            return path, preprocess(frames, size=self.size), torch.as_tensor(times), None
        except Exception as exc:  # recorded as a failure by the caller; the run goes on
            return path, None, None, f"{type(exc).__name__}: {exc}"


def extract(
    videos: str | Sequence[str],
    vision: str,
    out: str,
    *,
    fps: float = 1.0,
    max_frames: int | None = None,
    num_slow: int = 8,
    stride: int = 4,
    layer: int = -2,
    batch_size: int = 64,
    device=None,
    dtype=None,
    store_dtype: torch.dtype = torch.float16,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    progress: bool = True,
) -> dict:
    """Extract features of every video not yet in ``out`` (this rank's share: ``i % world_size == rank``).

    Returns ``{"done": n, "skipped": n, "failed": n}`` for this rank.
    """
    from tqdm import tqdm  # noqa: PLC0415

    if not (isinstance(fps, (int, float)) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    for name, v in (("num_slow", num_slow), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank!r}")
    paths = list_videos(videos)
    os.makedirs(out, exist_ok=True)
    keys = [video_key(p) for p in paths]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"videos has several files with the same name (cache key): {dup[:5]}")
    # Leftovers of this rank's killed runs (a finished file is never a .tmp).
    tag = f"rank{rank}"
    for name in os.listdir(out):
        if name.endswith(f".{tag}.tmp"):
            os.remove(os.path.join(out, name))
    mine = [p for i, p in enumerate(paths) if i % world_size == rank]
    todo = [p for p in mine if not os.path.exists(cache_path(out, video_key(p)))]
    stats = {"done": 0, "skipped": len(mine) - len(todo), "failed": 0}
    if not todo:
        return stats
    encoder = VisionEncoder(vision, device=device, dtype=dtype, layer=layer, batch_size=batch_size)
    _, _, slowfast_pool = _video_runtime()
    if encoder.grid % stride:
        raise ValueError(f"stride={stride} does not divide the vision grid {encoder.grid}")
    loader = torch.utils.data.DataLoader(
        _Decoded(todo, fps, max_frames, encoder.image_size), batch_size=None, shuffle=False,
        num_workers=workers, pin_memory=encoder.device.type == "cuda",
    )
    meta = {"vision": vision, "layer": layer, "fps": fps, "num_slow": num_slow, "stride": stride,
            "max_frames": max_frames, "dtype": str(store_dtype).replace("torch.", "")}
    bar = tqdm(total=len(todo), desc=f"extract[rank {rank}]" if world_size > 1 else "extract", unit="video",
               disable=not progress)
    for path, pixels, times, error in loader:
        key = video_key(path)
        t0 = time.perf_counter()
        if error is None:
            try:
                feats = encoder(pixels).float()  # [T, G, G, D]
                slow, fast = slowfast_pool(feats.unsqueeze(0), num_slow=num_slow, stride=stride)
                idx = _slow_indices(feats.shape[0], num_slow)
                save_features(cache_path(out, key), slow[0].to(store_dtype), fast[0].to(store_dtype),
                              times, idx, {**meta, "num_frames": feats.shape[0], "video": os.path.basename(path)},
                              tmp_tag=tag)
            except Exception as exc:  # noqa: BLE001  (a batch job records failures and carries on)
                error = f"{type(exc).__name__}: {exc}"
        if error is None:
            stats["done"] += 1
            _append_jsonl(os.path.join(out, EXTRACTED), {"video": key, "rank": rank, "frames": int(pixels.shape[0]),
                                                         "seconds": round(time.perf_counter() - t0, 4)})
        else:
            stats["failed"] += 1
            _append_jsonl(os.path.join(out, FAILURES), {"video": path, "rank": rank, "error": error,
                                                        "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        bar.update(1)
    bar.close()
    return stats


def _slow_indices(num_frames: int, num_slow: int) -> torch.Tensor:
    """The frames ``slowfast_pool`` keeps for the object branch."""
    from ..video import uniform_indices  # noqa: PLC0415

    return uniform_indices(num_frames, num_slow, allow_repeat=True)
