"""Throughput of the video runtime, against the usual alternatives, in one run on one machine.

1. decode + sample at 1 fps: ``slotvlm.video.load_video`` vs the common PyAV loop that converts
   every decoded frame to RGB and keeps one per second (frames/s = source frames per second).
2. CLIP pre-processing: ``slotvlm.video.preprocess`` (fused C++ op) vs transformers'
   ``CLIPImageProcessor`` configured as for openai/clip-vit-large-patch14 (frames/s per frame size),
   with the largest difference between the two printed as a check.

Prints a table and appends one CSV row per measurement to ``video-<cpu>.csv`` (timestamp, commit,
device, torch, what, frames_per_s, speedup): in ``bench/results/`` with ``--save``, otherwise in
``$SLOTVLM_BENCH_DIR`` or ``<temp>/slotvlm-bench/`` (outside the checkout).

    python bench/video.py                 # defaults: well under a minute on a 2-core CPU
    python bench/video.py --sizes 1080x1920 --frames 64 --threads 1
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from _common import output_dir  # noqa: E402


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def natural_frames(t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Gradients + edges + noise (content does not change the speed, but keeps the check honest)."""
    g = torch.Generator().manual_seed(seed)
    yy = torch.linspace(0, 1, h).view(1, h, 1, 1)
    xx = torch.linspace(0, 1, w).view(1, 1, w, 1)
    img = 127 + 100 * torch.sin(7 * xx + 5 * yy + torch.rand(t, 1, 1, 3, generator=g) * 6)
    img = img + torch.randn(t, h, w, 3, generator=g) * 15
    return img.clamp(0, 255).to(torch.uint8)


def best_times(fns, repeat: int) -> list[float]:
    """Best wall time of each function; the functions are interleaved so that a change in the
    machine's load during the run affects all of them alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def write_clip(path: str, seconds: float, fps: int, w: int, h: int) -> int:
    import av

    n = int(seconds * fps)
    base = natural_frames(1, h, w, seed=1)[0].numpy()
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "ultrafast"}
        for i in range(n):
            img = np.roll(base, 3 * i, axis=1)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return n


def naive_decode(path: str, fps: float):
    """What many pipelines do: convert every frame, then keep one per 1/fps seconds."""
    import av

    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(s)]
    out, nxt = [], 0.0
    for t, a in frames:
        if t + 1e-9 >= nxt:
            out.append(a)
            nxt += 1.0 / fps
    return np.stack(out)


def clip_processor():
    import logging

    import transformers

    logging.getLogger("transformers").setLevel(logging.ERROR)
    from slotvlm.video import CLIP_MEAN, CLIP_STD

    return transformers.CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": 224}, resample=3, do_center_crop=True,
        crop_size={"height": 224, "width": 224}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), do_convert_rgb=True,
    )


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"frame size must look like HEIGHTxWIDTH (e.g. 480x854), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Frames/s of slotvlm's video runtime (decode+sample, CLIP preprocess) against "
        "a plain PyAV loop and transformers' CLIPImageProcessor, measured in the same run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--sizes", default="480x854,640x360,1080x1920",
                    help="comma-separated HEIGHTxWIDTH frame sizes for the preprocess benchmark")
    ap.add_argument("--frames", type=int, default=16, help="frames per preprocess call")
    ap.add_argument("--repeat", type=int, default=4, help="timed repetitions (interleaved); the best is reported")
    ap.add_argument("--video-seconds", type=float, default=20.0, help="length of the synthetic clip")
    ap.add_argument("--video-size", type=parse_size, default=(360, 640), help="HEIGHTxWIDTH of the clip")
    ap.add_argument("--video-fps", type=int, default=30, help="native frame rate of the clip")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--save", action="store_true",
                    help="append to bench/results/video-<cpu>.csv (default: $SLOTVLM_BENCH_DIR or <temp>/slotvlm-bench/)")
    ap.add_argument("--csv", type=Path, default=None, help="CSV to append to (overrides --save)")
    ap.add_argument("--no-csv", action="store_true", help="print only, append nothing")
    args = ap.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)

    from slotvlm.video import load_video, preprocess

    cpu = cpu_name()
    device = f"{cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    rows = []  # (what, ours_fps, baseline_fps)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.mp4")
        h, w = args.video_size
        n_src = write_clip(path, args.video_seconds, args.video_fps, w, h)
        t_ours, t_naive = best_times([lambda: load_video(path, fps=1.0), lambda: naive_decode(path, 1.0)], args.repeat)
        rows.append((f"decode+sample 1fps {h}x{w}@{args.video_fps}", n_src / t_ours, n_src / t_naive,
                     "PyAV decode+convert all", "source frames/s"))

    proc = clip_processor()
    for h, w in sizes:
        frames = natural_frames(args.frames, h, w, seed=h * w)
        arrays = list(frames.numpy())
        ref = proc(arrays, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
        ours = preprocess(frames)
        diff = (ours - ref).abs().max().item()
        t_ours, t_ref = best_times(
            [lambda: preprocess(frames), lambda: proc(arrays, return_tensors="pt", input_data_format="channels_last")],
            args.repeat,
        )
        rows.append((f"preprocess {h}x{w}", args.frames / t_ours, args.frames / t_ref, "CLIPImageProcessor",
                     f"max|diff| {diff:.1e}"))

    print(f"device: {device}, torch {torch.__version__}, commit {commit()}")
    print(f"{'what':<34} {'ours f/s':>10} {'baseline f/s':>13} {'speedup':>8}  {'baseline':<24} note")
    for what, ours, base, name, note in rows:
        print(f"{what:<34} {ours:>10.1f} {base:>13.1f} {ours / base:>7.2f}x  {name:<24} {note}")

    if not args.no_csv:
        out = args.csv or output_dir(args.save) / f"video-{re.sub(r'[^a-z0-9]+', '-', cpu.lower()).strip('-')}.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        new = not out.exists()
        stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        with open(out, "a", newline="", encoding="utf-8") as f:
            wr = csv.writer(f)
            if new:
                wr.writerow(["timestamp", "commit", "device", "torch", "what", "frames_per_s", "speedup"])
            for what, ours, base, name, _ in rows:
                wr.writerow([stamp, commit(), device, torch.__version__, what, f"{ours:.2f}", f"{ours / base:.3f}"])
                wr.writerow([stamp, commit(), device, torch.__version__, f"{what} [{name}]", f"{base:.2f}", "1.000"])
        print(f"appended {2 * len(rows)} rows to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
