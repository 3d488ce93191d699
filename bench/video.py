"""The video runtime against what users pick today, side by side in one run on one machine.

1. **decode + sample at 1 fps** of clips in H.264, H.265 and VP9 at 360p / 720p / 1080p, short
   (10 s) and long (10 min), that this script encodes with PyAV and caches outside the repository
   (``--clip-dir``). Providers:

   - ``ours``: :func:`slotvlm.video.load_video` (nearest frame to each ``i / fps`` by timestamp);
   - ``decord``: ``VideoReader.get_batch`` of the same frame indices (what Video-ChatGPT uses);
   - ``torchcodec-exact`` / ``torchcodec-approx``: ``VideoDecoder(seek_mode=...).get_frames_at``
     of the same indices (needs a torch it was built for: its registry wheel is a CUDA build);
   - ``pyav-all``: the usual PyAV loop that converts every decoded frame to RGB and keeps one per
     second.

   frames/s are *source* frames per second of wall time (the clip's frame count / seconds), so a
   provider that seeks past frames shows it. ``index agreement``: the fraction of sampled source
   frame indices equal to ours; ``max|diff|``: the largest pixel difference to our frames where
   the indices agree; ``peak RSS``: how much one call raises a fresh process's peak resident
   memory above what its imports took (``VmHWM`` reset before the call, in a separate process per provider). With ``--sparse K`` the long clips are also read with only ``K``
   frames spread over the video (``load_video(max_frames=K)``), where seeking matters.

2. **CLIP pre-processing** of frames at 360p, 480p (480×854), 720p and 1080p: ``ours``
   (:func:`slotvlm.video.preprocess`, fused C++), ``hf-pil`` (transformers' PIL backend,
   ``CLIPImageProcessorPil``) and ``hf-torchvision`` (``CLIPImageProcessor``, transformers'
   torchvision backend, the default when torchvision is installed), all configured as for
   openai/clip-vit-large-patch14, with the same torch thread count. torchvision must match the
   installed torch; where it cannot be installed beside this torch, ``--torchvision-python`` names
   another interpreter that has torch + torchvision + transformers: the frames go to a worker
   process there and each timed call is interleaved with ours. On a GPU also ``ours-cuda`` (the
   Triton kernel) and ``hf-torchvision-cuda``.

Every provider's row is a ratio measured in this run: the calls are interleaved, best of
``--repeat``. Prints tables; with ``--save`` appends the rows to
``bench/results/video-providers-<cpu>.csv`` (else to a CSV in a temporary folder, printed).

    python bench/video.py --quick                     # 10 s 360p clips only, ~1 min on 2 cores
    nice -n 19 python bench/video.py --save           # reduced default for a 2-core CPU (see --help)
    python bench/video.py --long-sizes 360p,720p,1080p --save   # the full grid (hours on 2 cores)
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"360p": (360, 640), "480p": (480, 854), "720p": (720, 1280), "1080p": (1080, 1920)}
CODECS = {  # name: (encoder, container extension, encoder options)
    "h264": ("libx264", "mp4", {"preset": "veryfast"}),
    "h265": ("libx265", "mp4", {"preset": "ultrafast", "x265-params": "log-level=error"}),
    "vp9": ("libvpx-vp9", "webm", {"deadline": "realtime", "cpu-used": "8", "row-mt": "1", "crf": "32", "b": "0"}),
}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # = slotvlm.video.CLIP_MEAN (the worker cannot import slotvlm)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
NOTE = "loaded shared machine (other jobs running); compare providers only as ratios within one run"


# ------------------------------------------------------------------------------------------------
# machine stamps
# ------------------------------------------------------------------------------------------------
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
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def best_times(fns, repeat: int) -> list[float]:
    """Best wall time of each function; calls interleaved so that load changes hit all alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


# ------------------------------------------------------------------------------------------------
# clips
# ------------------------------------------------------------------------------------------------
def _content(h: int, w: int) -> np.ndarray:
    """A textured base image (gradients + noise), 2x wide so that it can scroll."""
    rng = np.random.default_rng(h * w)
    yy, xx = np.mgrid[0:h, 0 : 2 * w].astype(np.float32)
    img = 127 + 90 * np.sin(xx[..., None] / (13 + np.arange(3)) + yy[..., None] / 29)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_clip(path: Path, codec: str, h: int, w: int, seconds: float, fps: int, gop: int) -> Path:
    """Encode a scrolling, noisy clip (so the codec does real work) with PyAV; atomic write."""
    import av

    enc, _, opts = CODECS[codec]
    base = _content(h, w)
    n = int(round(seconds * fps))
    tmp = path.with_name(path.name + ".part")
    with av.open(str(tmp), "w", format="webm" if path.suffix == ".webm" else "mp4") as c:
        s = c.add_stream(enc, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.gop_size = gop
        s.options = dict(opts)
        for i in range(n):
            x0 = (5 * i) % w
            img = np.ascontiguousarray(base[:, x0 : x0 + w])
            y, x = (i * 3) % (h - h // 6), (i * 7) % (w - w // 6)
            img[y : y + h // 6, x : x + w // 6] = (i * 11 % 256, 200, 255 - i * 5 % 256)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    os.replace(tmp, path)
    return path


def clip_path(clip_dir: Path, codec: str, size: str, seconds: float, fps: int, gop: int) -> Path:
    return clip_dir / f"{codec}-{size}-{seconds:g}s-{fps}fps-g{gop}.{CODECS[codec][1]}"


# ------------------------------------------------------------------------------------------------
# decode providers: each returns (frames uint8 [N, H, W, 3] numpy, source frame indices [N])
# ------------------------------------------------------------------------------------------------
def _probe(path) -> tuple[int, float]:
    """(frame count, native fps) from the container, as a user of decord/torchcodec would get them."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        rate = float(s.average_rate)
        n = s.frames or int(round(c.duration / 1e6 * rate))  # WebM stores no frame count
        return n, rate


def ours(path, fps_native, max_frames=None):
    from slotvlm.video import load_video

    frames, times = load_video(path, fps=1.0, max_frames=max_frames)
    return frames.numpy(), np.rint(times.numpy() * fps_native).astype(np.int64)


def target_indices(n: int, fps_native: float, max_frames=None) -> np.ndarray:
    from slotvlm.video import sample_fps_indices

    return sample_fps_indices(n, fps_native, 1.0, max_frames).numpy()


def decord_provider():
    import decord  # noqa: F401

    def run(path, fps_native, max_frames=None):
        from decord import VideoReader, cpu

        vr = VideoReader(str(path), ctx=cpu(0), num_threads=0)
        idx = target_indices(len(vr), vr.get_avg_fps(), max_frames)
        return vr.get_batch(idx.tolist()).asnumpy(), idx

    return run


def torchcodec_provider(mode: str):
    from torchcodec.decoders import VideoDecoder  # noqa: F401  (raises where it cannot load)

    def run(path, fps_native, max_frames=None):
        from torchcodec.decoders import VideoDecoder

        dec = VideoDecoder(str(path), seek_mode=mode, num_ffmpeg_threads=0)
        n = dec.metadata.num_frames
        idx = target_indices(n, dec.metadata.average_fps, max_frames)
        out = dec.get_frames_at(indices=idx.tolist()).data  # [N, 3, H, W]
        return out.permute(0, 2, 3, 1).numpy(), idx

    return run


def pyav_all(path, fps_native, max_frames=None):
    """What many pipelines do: decode and convert every frame to RGB, keep one per second (the
    others are dropped at once, so memory stays that of the kept frames)."""
    import av

    out, idx, nxt, t0 = [], [], 0.0, None
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for i, f in enumerate(c.decode(s)):
            a = f.to_ndarray(format="rgb24")
            t0 = f.time if t0 is None else t0
            if f.time - t0 + 1e-9 >= nxt:
                out.append(a)
                idx.append(i)
                nxt += 1.0
    if max_frames is not None and len(out) > max_frames:
        keep = np.rint(np.linspace(0, len(out) - 1, max_frames)).astype(int)
        out, idx = [out[i] for i in keep], [idx[i] for i in keep]
    return np.stack(out), np.array(idx)


def decode_providers() -> tuple[dict, dict]:
    """{name: fn} of the providers that load here, {name: reason} of those that do not."""
    have, skipped = {"ours": ours}, {}
    try:
        have["decord"] = decord_provider()
    except Exception as exc:  # noqa: BLE001
        skipped["decord"] = f"{type(exc).__name__}: {exc}"
    for mode, name in (("exact", "torchcodec-exact"), ("approximate", "torchcodec-approx")):
        try:
            have[name] = torchcodec_provider(mode)
        except Exception as exc:  # noqa: BLE001  (its CUDA wheel cannot load with a CPU torch)
            skipped[name] = (f"cannot load torchcodec here ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); its "
                             "registry wheel is a CUDA build (needs libc10_cuda, libnvrtc) that cannot load with a CPU torch")
    have["pyav-all"] = pyav_all
    return have, skipped


def rss_probe(provider: str, path: str, max_frames) -> int:
    """Runs in a fresh process: one call of ``provider``; prints the growth of the peak resident
    set over what the imports took (MiB)."""
    import torch  # noqa: F401  (imports are not the call's memory)

    import slotvlm.video  # noqa: F401

    providers, _ = decode_providers()
    fn = providers[provider]
    n, rate = _probe(path)
    def status(key):  # kB
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1])
        raise KeyError(key)

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident set: imports do not count
    before = status("VmRSS:")
    fn(path, rate, max_frames)
    print(json.dumps({"peak_rss_mb": (status("VmHWM:") - before) / 1024}))
    return 0


def peak_rss(provider: str, path: Path, max_frames) -> float | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--rss-probe", provider, str(path), str(max_frames or 0)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]
    except (subprocess.SubprocessError, ValueError, IndexError, KeyError):
        return None


def bench_decode(path: Path, label: str, providers: dict, repeat: int, max_frames=None) -> list[dict]:
    n_src, fps_native = _probe(path)
    results = {}
    for name, fn in providers.items():  # one untimed call each (outputs, indices); peak RSS apart
        frames, idx = fn(path, fps_native, max_frames)
        results[name] = dict(frames=frames, idx=idx, rss=peak_rss(name, path, max_frames))
    names = list(providers)
    times = best_times([lambda f=providers[k]: f(path, fps_native, max_frames) for k in names], repeat)
    ref = results["ours"]
    rows = []
    for name, t in zip(names, times):
        r = results[name]
        n = min(len(r["idx"]), len(ref["idx"]))
        agree = r["idx"][:n] == ref["idx"][:n]
        agreement = agree.sum() / max(len(r["idx"]), len(ref["idx"]))
        diff = None
        if agree.any() and r["frames"].shape[1:] == ref["frames"].shape[1:]:
            a = r["frames"][:n][agree].astype(np.int16)
            b = ref["frames"][:n][agree].astype(np.int16)
            diff = (int(np.abs(a - b).max()), float(np.abs(a - b).mean()))
        rows.append(dict(kind="decode+sample" if max_frames is None else f"decode+sample max_frames={max_frames}",
                         what=label, provider=name, frames_per_s=n_src / t, seconds=t, n_out=len(r["idx"]),
                         index_agreement=agreement, max_abs_diff=None if diff is None else diff[0],
                         mean_abs_diff=None if diff is None else diff[1], peak_rss_mb=r["rss"]))
    base = rows[0]["frames_per_s"]
    for row in rows:
        row["ratio_vs_ours"] = row["frames_per_s"] / base
    return rows


# ------------------------------------------------------------------------------------------------
# preprocessing providers
# ------------------------------------------------------------------------------------------------
def _hf_kwargs():
    return dict(do_resize=True, size={"shortest_edge": 224}, resample=3, do_center_crop=True,
                crop_size={"height": 224, "width": 224}, do_rescale=True, rescale_factor=1 / 255,
                do_normalize=True, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), do_convert_rgb=True)


def hf_processor(backend: str):
    """transformers' CLIP processor with the given backend ("pil" or "torchvision")."""
    import logging

    import transformers

    logging.getLogger("transformers").setLevel(logging.ERROR)
    if backend == "pil":
        return transformers.CLIPImageProcessorPil(**_hf_kwargs())
    import torchvision  # noqa: F401  (CLIPImageProcessor is the torchvision backend)

    return transformers.CLIPImageProcessor(**_hf_kwargs())


def run_tv(proc, frames_nhwc, device: str = "cpu"):
    """The torchvision processor on a uint8 [T, H, W, 3] tensor batch (how a video user calls it)."""
    out = proc(frames_nhwc, return_tensors="pt", input_data_format="channels_last", device=device)
    return out["pixel_values"]


def run_pil(proc, arrays):
    return proc(arrays, return_tensors="pt", input_data_format="channels_last")["pixel_values"]


class TorchvisionWorker:
    """The torchvision processor in another interpreter (``--torchvision-python``): frames and
    outputs pass through .npy files, one JSON line per command on stdin/stdout."""

    def __init__(self, python: str, threads: int):
        self.p = subprocess.Popen([python, str(Path(__file__).resolve()), "--worker", "--threads", str(threads)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.info = self._ask({"cmd": "info"})

    def _ask(self, msg: dict) -> dict:
        self.p.stdin.write(json.dumps(msg) + "\n")
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError("torchvision worker died (see its stderr above)")
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"torchvision worker: {out['error']}")
        return out

    def load(self, frames: np.ndarray, tmp: str) -> np.ndarray:
        src, dst = os.path.join(tmp, "frames.npy"), os.path.join(tmp, "out.npy")
        np.save(src, frames)
        self._ask({"cmd": "load", "src": src, "dst": dst})
        return np.load(dst)

    def time_once(self) -> float:
        return self._ask({"cmd": "time"})["seconds"]

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=30)


def worker_main(threads: int) -> int:
    """Runs in the torchvision interpreter: never imports slotvlm (its _C is built for another torch)."""
    import torch

    torch.set_num_threads(threads)
    proc, frames = None, None
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["cmd"] == "info":
                import torchvision
                import transformers

                proc = hf_processor("torchvision")
                reply = {"torch": torch.__version__, "torchvision": torchvision.__version__,
                         "transformers": transformers.__version__, "threads": torch.get_num_threads()}
            elif msg["cmd"] == "load":
                frames = torch.from_numpy(np.load(msg["src"]))
                np.save(msg["dst"], run_tv(proc, frames).numpy())
                reply = {"ok": True}
            else:
                t0 = time.perf_counter()
                run_tv(proc, frames)
                reply = {"seconds": time.perf_counter() - t0}
        except Exception as exc:  # noqa: BLE001
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)
    return 0


def natural_frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy = np.linspace(0, 1, h, dtype=np.float32)[None, :, None, None]
    xx = np.linspace(0, 1, w, dtype=np.float32)[None, None, :, None]
    img = 127 + 100 * np.sin(7 * xx + 5 * yy + rng.random((t, 1, 1, 3), dtype=np.float32) * 6)
    img = img + rng.normal(0, 15, (t, h, w, 3)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def bench_preprocess(size: str, n: int, repeat: int, tv_local, tv_worker, tmp: str, cuda: bool) -> list[dict]:
    import torch

    from slotvlm.video import preprocess

    h, w = SIZES[size]
    arr = natural_frames(n, h, w, seed=h * w)
    frames = torch.from_numpy(arr)
    arrays = list(arr)
    pil = hf_processor("pil")
    ours_out = preprocess(frames)
    fns = {"ours": lambda: preprocess(frames), "hf-pil": lambda: run_pil(pil, arrays)}
    outs = {"ours": ours_out, "hf-pil": run_pil(pil, arrays)}
    remote = None
    if tv_local is not None:
        fns["hf-torchvision"] = lambda: run_tv(tv_local, frames)
        outs["hf-torchvision"] = run_tv(tv_local, frames)
    elif tv_worker is not None:
        outs["hf-torchvision"] = torch.from_numpy(tv_worker.load(arr, tmp))
        remote = "hf-torchvision"
    if cuda:
        fg = frames.cuda()

        def sync(fn):
            def run():
                fn()
                torch.cuda.synchronize()
            return run

        fns["ours-cuda"] = sync(lambda: preprocess(fg))
        outs["ours-cuda"] = preprocess(fg).cpu()
        if tv_local is not None:
            fns["hf-torchvision-cuda"] = sync(lambda: run_tv(tv_local, fg, "cuda"))
            outs["hf-torchvision-cuda"] = run_tv(tv_local, fg, "cuda").cpu()
        for f in fns.values():
            f()  # compile / warm up
    names = list(fns) + ([remote] if remote else [])
    best = {k: float("inf") for k in names}
    for _ in range(repeat):
        for k in names:
            if k == remote:
                best[k] = min(best[k], tv_worker.time_once())
            else:
                t0 = time.perf_counter()
                fns[k]()
                best[k] = min(best[k], time.perf_counter() - t0)
    # one intensity level of the uint8 image after normalisation, per channel
    level = torch.tensor([1 / 255 / s for s in CLIP_STD]).view(1, 3, 1, 1)
    rows = []
    for k in names:
        d = (outs[k].float() - ours_out.float()).abs()
        levels = (d / level).amax().item()
        rows.append(dict(kind="preprocess", what=f"{size} {h}x{w} x{n} frames", provider=k, frames_per_s=n / best[k],
                         seconds=best[k], n_out=n, max_abs_diff=d.max().item(), mean_abs_diff=d.mean().item(),
                         diff_levels=levels, frac_differing=(d > 1e-6).float().mean().item()))
    base = rows[0]["frames_per_s"]
    for row in rows:
        row["ratio_vs_ours"] = row["frames_per_s"] / base
    return rows


# ------------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------------
CSV_COLUMNS = ["timestamp", "commit", "cpu", "cores", "torch_threads", "loadavg", "torch", "versions", "kind",
               "what", "provider", "frames_per_s", "ratio_vs_ours", "index_agreement", "max_abs_diff",
               "mean_abs_diff", "diff_levels", "peak_rss_mb", "reduced", "note"]


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_rows(rows):
    print(f"{'kind':<26} {'what':<34} {'provider':<20} {'frames/s':>10} {'vs ours':>8} {'idx agree':>9} "
          f"{'max|diff|':>10} {'peak RSS MB':>11}")
    for r in rows:
        print(f"{r['kind']:<26} {r['what']:<34} {r['provider']:<20} {r['frames_per_s']:>10.1f} "
              f"{r['ratio_vs_ours']:>7.2f}x {fmt(r.get('index_agreement'), '.3f'):>9} "
              f"{fmt(r.get('max_abs_diff'), '.3g'):>10} {fmt(r.get('peak_rss_mb'), '.0f'):>11}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Decode+1fps sampling and CLIP pre-processing of slotvlm against decord, torchcodec, "
        "PyAV and transformers' processors (PIL and torchvision backends), measured side by side.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Reduced default for a 2-core CPU: long (10 min) clips only at 360p; --long-sizes "
        "360p,720p,1080p gives the full grid (encoding 10-minute 1080p H.265 takes hours on 2 cores).",
    )
    ap.add_argument("--codecs", default="h264,h265,vp9", help="comma-separated, of " + ",".join(CODECS))
    ap.add_argument("--short-sizes", default="360p,720p,1080p", help="sizes of the short clips")
    ap.add_argument("--long-sizes", default="360p", help="sizes of the long clips ('' for none)")
    ap.add_argument("--short-seconds", type=float, default=10.0)
    ap.add_argument("--long-seconds", type=float, default=600.0)
    ap.add_argument("--fps", type=int, default=30, help="native frame rate of the clips")
    ap.add_argument("--gop", type=int, default=250, help="keyframe interval of the clips (x264's default)")
    ap.add_argument("--sparse", type=int, default=16, help="also read long clips with max_frames=K (0: off)")
    ap.add_argument("--clip-dir", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                    / "slotvlm" / "bench-clips", help="where encoded clips are cached (outside the repo)")
    ap.add_argument("--pre-sizes", default="360p,480p,720p,1080p", help="frame sizes for preprocessing")
    ap.add_argument("--pre-frames", type=int, default=32, help="frames per preprocessing call")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved timed repetitions; best is kept")
    ap.add_argument("--long-repeat", type=int, default=2, help="repetitions for the long clips")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    ap.add_argument("--torchvision-python", default=None,
                    help="python of an environment with torch+torchvision+transformers, used when torchvision "
                    "is not importable here")
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--skip-preprocess", action="store_true")
    ap.add_argument("--quick", action="store_true", help="10 s 360p H.264 clip and 360p frames only")
    ap.add_argument("--save", action="store_true", help="append rows to bench/results/ (default: a temp folder)")
    ap.add_argument("--csv", type=Path, default=None, help="CSV to append to (overrides --save's path)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rss-probe", nargs=3, metavar=("PROVIDER", "PATH", "MAX_FRAMES"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    threads = args.threads or os.cpu_count()
    if args.worker:
        return worker_main(threads)
    if args.rss_probe:
        name, path, mf = args.rss_probe
        return rss_probe(name, path, int(mf) or None)

    import torch

    torch.set_num_threads(threads)
    if args.quick:
        args.codecs, args.short_sizes, args.long_sizes, args.pre_sizes = "h264", "360p", "", "360p"
    for opt in ("codecs", "short_sizes", "long_sizes", "pre_sizes"):
        vals = [v for v in getattr(args, opt).split(",") if v]
        known = CODECS if opt == "codecs" else SIZES
        bad = [v for v in vals if v not in known]
        if bad:
            ap.error(f"--{opt.replace('_', '-')}: unknown {bad}, choose from {sorted(known)}")
        setattr(args, opt, vals)

    cpu = cpu_name()
    reduced = args.long_sizes != ["360p", "720p", "1080p"] or args.long_seconds < 600
    print(f"CPU: {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, load {loadavg()}; "
          f"torch {torch.__version__}; commit {commit()}")
    rows, skipped = [], {}
    versions = {"torch": torch.__version__}
    try:
        import av

        versions["av"] = av.__version__
    except ImportError:
        pass

    if not args.skip_decode:
        from tqdm import tqdm

        providers, skipped_dec = decode_providers()
        skipped.update(skipped_dec)
        for name in ("decord", "torchcodec"):
            try:
                versions[name] = __import__(name).__version__
            except Exception:  # noqa: BLE001
                pass
        args.clip_dir.mkdir(parents=True, exist_ok=True)
        jobs = [(c, s, args.short_seconds, args.repeat, None) for c in args.codecs for s in args.short_sizes]
        jobs += [(c, s, args.long_seconds, args.long_repeat, None) for c in args.codecs for s in args.long_sizes]
        if args.sparse:
            jobs += [(c, s, args.long_seconds, args.long_repeat, args.sparse) for c in args.codecs for s in args.long_sizes]
        for codec, size, secs, rep, mf in tqdm(jobs, desc="decode", unit="clip"):
            path = clip_path(args.clip_dir, codec, size, secs, args.fps, args.gop)
            if not path.exists():
                tqdm.write(f"encoding {path.name} (cached for later runs) ...")
                make_clip(path, codec, *SIZES[size], secs, args.fps, args.gop)
            label = f"{codec} {size} {secs:g}s@{args.fps} gop{args.gop}"
            new = bench_decode(path, label, providers, rep, mf)
            rows += new
            for r in new:
                tqdm.write(f"  {label:<30} {r['kind']:<28} {r['provider']:<18} {r['frames_per_s']:9.1f} f/s "
                           f"{r['ratio_vs_ours']:6.2f}x agree {r['index_agreement']:.3f} "
                           f"max|diff| {fmt(r['max_abs_diff'], 'd')} rss {fmt(r['peak_rss_mb'], '.0f')} MB")

    if not args.skip_preprocess:
        import transformers

        versions["transformers"] = transformers.__version__
        tv_local = tv_worker = None
        try:
            tv_local = hf_processor("torchvision")
            import torchvision

            versions["torchvision"] = torchvision.__version__
        except ImportError as exc:
            if args.torchvision_python:
                tv_worker = TorchvisionWorker(args.torchvision_python, threads)
                i = tv_worker.info
                versions["torchvision"] = f"{i['torchvision']} (worker: torch {i['torch']}, transformers {i['transformers']}, {i['threads']} threads)"
            else:
                skipped["hf-torchvision"] = (f"torchvision not importable here ({exc}); it pulls a newer torch "
                                             "unless pinned to this torch's release: pass --torchvision-python")
        cuda = torch.cuda.is_available()
        if not cuda:
            skipped["ours-cuda / hf-torchvision-cuda"] = "no CUDA device"
        with tempfile.TemporaryDirectory() as tmp:
            for size in args.pre_sizes:
                new = bench_preprocess(size, args.pre_frames, args.repeat, tv_local, tv_worker, tmp, cuda)
                rows += new
                for r in new:
                    print(f"  preprocess {r['what']:<26} {r['provider']:<20} {r['frames_per_s']:9.1f} f/s "
                          f"{r['ratio_vs_ours']:6.2f}x  max|diff| {r['max_abs_diff']:.2e} "
                          f"({r['diff_levels']:.2f} levels, {100 * r['frac_differing']:.2f}% of values differ)")
        if tv_worker is not None:
            tv_worker.close()

    print()
    print_rows(rows)
    for k, why in skipped.items():
        print(f"skipped {k}: {why}")

    out = args.csv or (ROOT / "bench" / "results" if args.save else Path(tempfile.mkdtemp(prefix="slotvlm-bench-"))) \
        / f"video-providers-{re.sub(r'[^a-z0-9]+', '-', cpu.lower()).strip('-')}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    new_file = not out.exists()
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    common = dict(timestamp=stamp, commit=commit(), cpu=cpu, cores=os.cpu_count(), torch_threads=torch.get_num_threads(),
                  loadavg=loadavg(), torch=torch.__version__, versions=json.dumps(versions), reduced=reduced)
    with open(out, "a", newline="", encoding="utf-8") as f:
        wr = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        if new_file:
            wr.writeheader()
        for r in rows:
            wr.writerow({**common, **{k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()},
                         "note": NOTE})
        for k, why in skipped.items():
            wr.writerow({**common, "kind": "skipped", "provider": k, "note": why})
    print(f"appended {len(rows) + len(skipped)} rows to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
