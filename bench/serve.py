"""Load test of `slotvlm serve`: N concurrent `openai` SDK clients asking about a small set of videos.

    python bench/serve.py                                   # starts a server with a tiny random model
    python bench/serve.py --clients 16 --requests 8 --save  # ... and appends to bench/results/serve.csv
    python bench/serve.py --base-url http://127.0.0.1:8000/v1 --api-key KEY   # an already running server

Every request streams (so the time to first token is seen by the client), asks one of
``--videos`` synthetic clips (of different lengths, sent as data URLs), and the first question about
each clip is a cache miss, later ones hits. Reported: requests/s, p50/p99 latency, p50/p99 time to
first token (client side), the server's video-cache hit rate over the run (from ``/metrics``) and
its mean batch size. With the tiny model on a CPU this measures the server's own overhead
(HTTP, queueing, batching, the decode loop), not a real model; on a GPU with a real model, the
real thing.

CSV rows go to a temporary folder unless ``--save`` is given (then ``bench/results/serve.csv``).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import datetime as _dt
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import commit, device_name  # noqa: E402

COLUMNS = ["timestamp", "commit", "device", "torch", "model", "clients", "requests", "videos", "max_tokens",
           "ok", "errors", "wall_s", "req_per_s", "p50_ms", "p99_ms", "ttft_p50_ms", "ttft_p99_ms",
           "cache_hit_rate", "mean_batch", "loadavg_1m"]
QUESTIONS = ["What is happening in the video?", "How many people are there?", "What color is the car?",
             "Describe the video in detail."]


def _quantile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _metrics(base_url: str, api_key: str) -> dict[str, float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(base_url.rstrip("/").removesuffix("/v1") + "/metrics",
                     headers={"Authorization": f"Bearer {api_key}"}, timeout=30).text
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if not s.labels or s.name.endswith(("_sum", "_count")):
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: str, workdir: str, max_batch: int) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    log = open(os.path.join(workdir, "server.log"), "w")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "slotvlm", "serve", "--model", model_dir, "--port", str(port),
                             "--max-batch", str(max_batch), "--log-level", "warning"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}); see {log.name}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            proc.kill()
            raise SystemExit(f"the server did not start in 300 s; see {log.name}")
        time.sleep(0.3)


async def run_load(base_url: str, api_key: str, model: str, videos: list[str], clients: int, requests: int,
                   max_tokens: int) -> tuple[list[float], list[float], int, float]:
    """(latencies s, TTFTs s, errors, wall s)."""
    from openai import AsyncOpenAI

    lat, ttft, errors = [], [], 0

    async def one(client, k):
        nonlocal errors
        t0 = time.perf_counter()
        first = None
        try:
            stream = await client.chat.completions.create(
                model=model, max_tokens=max_tokens, temperature=0, stream=True,
                messages=[{"role": "user", "content": [{"type": "video_url", "video_url": {"url": videos[k % len(videos)]}},
                                                       {"type": "text", "text": QUESTIONS[k % len(QUESTIONS)]}]}])
            async for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter()
        except Exception as exc:  # counted, reported; the run goes on
            errors += 1
            print(f"request failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return
        lat.append(time.perf_counter() - t0)
        if first is not None:
            ttft.append(first - t0)

    async def worker(client, c):
        for r in range(requests):
            await one(client, c * requests + r)

    async with AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=600) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(client, c) for c in range(clients)])
        wall = time.perf_counter() - t0
    return lat, ttft, errors, wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--base-url", default=None, help="a running server's /v1 URL (default: start one here)")
    ap.add_argument("--api-key", default=os.environ.get("SLOTVLM_API_KEY", "unused"), help="its API key")
    ap.add_argument("--model", default=None,
                    help="model folder for the server started here (default: a tiny random model in a temp folder)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients")
    ap.add_argument("--requests", type=int, default=4, help="requests per client, one after another")
    ap.add_argument("--videos", type=int, default=3, help="distinct videos asked about")
    ap.add_argument("--max-tokens", type=int, default=16, help="max_tokens per request")
    ap.add_argument("--max-batch", type=int, default=8, help="--max-batch of the server started here")
    ap.add_argument("--save", action="store_true", help="append the row to bench/results/serve.csv")
    args = ap.parse_args(argv)
    for name in ("clients", "requests", "videos", "max_tokens", "max_batch"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")

    import torch

    from slotvlm.testing import make_clip, make_tiny_slotvlm

    work = tempfile.mkdtemp(prefix="slotvlm-bench-serve-")
    proc = None
    try:
        videos = []
        for i in range(args.videos + 1):  # the last one only warms the server up
            path = make_clip(os.path.join(work, f"clip{i}.mp4"), seconds=3 + 2 * i, fps=2)
            videos.append("data:video/mp4;base64," + base64.b64encode(Path(path).read_bytes()).decode())
        warm, videos = videos[-1], videos[:-1]
        if args.base_url is None:
            model_dir = args.model or make_tiny_slotvlm(os.path.join(work, "tiny"))
            label = args.model or "tiny random (slotvlm.testing)"
            print(f"starting slotvlm serve --model {model_dir} ...", flush=True)
            proc, base = start_server(model_dir, work, args.max_batch)
            device = device_name("cpu") if not torch.cuda.is_available() else device_name("cuda")
        else:
            base, label, device = args.base_url, "remote", "unknown (remote server)"
        from openai import OpenAI

        model = OpenAI(base_url=base, api_key=args.api_key).models.list().data[0].id
        asyncio.run(run_load(base, args.api_key, model, [warm], 1, 1, 2))  # load everything once
        before = _metrics(base, args.api_key)
        lat, ttft, errors, wall = asyncio.run(run_load(base, args.api_key, model, videos, args.clients,
                                                       args.requests, args.max_tokens))
        after = _metrics(base, args.api_key)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def delta(name):
        return after.get(name, 0.0) - before.get(name, 0.0)

    hits, misses = delta("slotvlm_video_cache_hits_total"), delta("slotvlm_video_cache_misses_total")
    batches = delta("slotvlm_batch_size_count")
    row = {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "commit": commit(),
        "device": device, "torch": torch.__version__, "model": label, "clients": args.clients,
        "requests": args.clients * args.requests, "videos": args.videos, "max_tokens": args.max_tokens,
        "ok": len(lat), "errors": errors, "wall_s": f"{wall:.2f}", "req_per_s": f"{len(lat) / wall:.2f}",
        "p50_ms": f"{1e3 * _quantile(lat, 0.5):.1f}", "p99_ms": f"{1e3 * _quantile(lat, 0.99):.1f}",
        "ttft_p50_ms": f"{1e3 * _quantile(ttft, 0.5):.1f}", "ttft_p99_ms": f"{1e3 * _quantile(ttft, 0.99):.1f}",
        "cache_hit_rate": f"{hits / (hits + misses):.3f}" if hits + misses else "nan",
        "mean_batch": f"{delta('slotvlm_batch_size_sum') / batches:.2f}" if batches else "nan",
        "loadavg_1m": f"{os.getloadavg()[0]:.1f}",  # the machine's load while measuring: CPU numbers are only as quiet as it
    }
    print(f"\nserver: {base} ({label}); device: {device}; torch {torch.__version__}; commit {row['commit']}; "
          f"load average {row['loadavg_1m']}")
    keys = ["clients", "requests", "ok", "errors", "req_per_s", "p50_ms", "p99_ms", "ttft_p50_ms", "ttft_p99_ms",
            "cache_hit_rate", "mean_batch", "loadavg_1m"]
    print("  ".join(f"{k:>14}" for k in keys))
    print("  ".join(f"{str(row[k]):>14}" for k in keys))
    out = ROOT / "bench" / "results" / "serve.csv" if args.save else Path(work) / "serve.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists() or out.stat().st_size == 0
    with out.open("a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        w.writerow(row)
    print(f"{'appended' if args.save else 'wrote'} 1 row to {out}" + ("" if args.save else " (use --save for bench/results)"))
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
