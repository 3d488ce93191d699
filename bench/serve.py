"""Load test of `slotvlm serve`: N concurrent `openai` SDK clients asking about a small set of videos.

    python bench/serve.py                                   # starts a server with a tiny random model
    python bench/serve.py --clients 16 --requests 8 --save  # ... and appends to bench/results/serve.csv
    python bench/serve.py --base-url http://127.0.0.1:8000/v1 --api-key KEY   # an already running server
    python bench/serve.py --sweep 1 4 16 --max-batch 16 --save   # one-at-a-time vs batched, interleaved

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

from bench._common import append_csv, commit, device_name  # noqa: E402

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


SWEEP_COLUMNS = ["timestamp", "commit", "device", "torch", "model", "mode", "max_batch", "clients", "requests",
                 "max_tokens", "ok", "errors", "wall_s", "req_per_s", "p50_ms", "p95_ms", "ttft_p50_ms", "mean_batch",
                 "loadavg_1m"]


def _measure(base: str, api_key: str, model: str, videos: list[str], clients: int, requests: int,
             max_tokens: int) -> dict:
    """One load run against ``base``: the measured numbers and the server-side counters' deltas."""
    before = _metrics(base, api_key)
    lat, ttft, errors, wall = asyncio.run(run_load(base, api_key, model, videos, clients, requests, max_tokens))
    after = _metrics(base, api_key)

    def delta(name):
        return after.get(name, 0.0) - before.get(name, 0.0)

    hits, misses = delta("slotvlm_video_cache_hits_total"), delta("slotvlm_video_cache_misses_total")
    batches = delta("slotvlm_batch_size_count")
    return {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "commit": commit(),
        "clients": clients, "requests": clients * requests, "max_tokens": max_tokens,
        "ok": len(lat), "errors": errors, "wall_s": f"{wall:.2f}", "req_per_s": f"{len(lat) / wall:.2f}",
        "p50_ms": f"{1e3 * _quantile(lat, 0.5):.1f}", "p95_ms": f"{1e3 * _quantile(lat, 0.95):.1f}",
        "p99_ms": f"{1e3 * _quantile(lat, 0.99):.1f}",
        "ttft_p50_ms": f"{1e3 * _quantile(ttft, 0.5):.1f}", "ttft_p99_ms": f"{1e3 * _quantile(ttft, 0.99):.1f}",
        "cache_hit_rate": f"{hits / (hits + misses):.3f}" if hits + misses else "nan",
        "mean_batch": f"{delta('slotvlm_batch_size_sum') / batches:.2f}" if batches else "nan",
        "loadavg_1m": f"{os.getloadavg()[0]:.1f}",  # the machine's load while measuring: CPU numbers are only as quiet as it
    }


def _stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def sweep(args, work: str, model_dir: str, label: str, device: str, videos: list[str], warm: str) -> int:
    """One-at-a-time (a server with --max-batch 1) against batched (--max-batch B) at each client
    count, both servers up for the whole run and the runs interleaved (mode by mode at each client
    count, ``--repeats`` times), so a change in the machine's load hits both modes alike."""
    import torch
    from openai import OpenAI

    servers = {}
    try:
        for mode, mb in (("one-at-a-time", 1), ("batched", args.max_batch)):
            print(f"starting slotvlm serve --max-batch {mb} ({mode}) ...", flush=True)
            os.makedirs(os.path.join(work, mode), exist_ok=True)
            proc, base = start_server(model_dir, os.path.join(work, mode), mb)
            servers[mode] = (proc, base, mb)
        rows = []
        for rep in range(args.repeats):
            for clients in args.sweep:
                for mode, (_, base, mb) in servers.items():
                    model = OpenAI(base_url=base, api_key=args.api_key).models.list().data[0].id
                    if rep == 0 and clients == args.sweep[0]:
                        asyncio.run(run_load(base, args.api_key, model, [warm] + videos, 1, len(videos) + 1, 2))
                    row = _measure(base, args.api_key, model, videos, clients, args.requests, args.max_tokens)
                    row.update(device=device, torch=torch.__version__, model=label, mode=mode, max_batch=mb)
                    rows.append(row)
                    print(f"  rep {rep} clients {clients:>3} {mode:>14}: {row['req_per_s']:>7} req/s  "
                          f"p50 {row['p50_ms']:>8} ms  p95 {row['p95_ms']:>8} ms  mean batch {row['mean_batch']}",
                          flush=True)
    finally:
        for proc, _, _ in servers.values():
            _stop(proc)
    print("\nclients  mode            req/s (median over repeats)  p95 ms   batched/one-at-a-time")
    for clients in args.sweep:
        med = {}
        for mode in servers:
            got = sorted(float(r["req_per_s"]) for r in rows if r["clients"] == clients and r["mode"] == mode)
            p95 = sorted(float(r["p95_ms"]) for r in rows if r["clients"] == clients and r["mode"] == mode)
            med[mode] = got[len(got) // 2]
            print(f"{clients:>7}  {mode:<14}  {med[mode]:>10.2f}                   {p95[len(p95) // 2]:>8.1f}")
        print(f"{'':>7}  {'ratio':<14}  {med['batched'] / med['one-at-a-time']:>10.2f}x")
    out = ROOT / "bench" / "results" / "serve_sweep.csv" if args.save else Path(work) / "serve_sweep.csv"
    append_csv(out, rows, SWEEP_COLUMNS)
    print(f"{'appended' if args.save else 'wrote'} {len(rows)} rows to {out}")
    return 0 if all(r["errors"] == 0 for r in rows) else 1


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
    ap.add_argument("--sweep", type=int, nargs="+", default=None, metavar="CLIENTS",
                    help="compare one-at-a-time (--max-batch 1) with batched (--max-batch MAX_BATCH) servers at these "
                    "client counts, e.g. --sweep 1 4 16 --max-batch 16 (rows to bench/results/serve_sweep.csv)")
    ap.add_argument("--repeats", type=int, default=3, help="with --sweep: interleaved repeats of the whole sweep")
    ap.add_argument("--save", action="store_true", help="append the row(s) to bench/results/serve.csv (serve_sweep.csv)")
    args = ap.parse_args(argv)
    for name in ("clients", "requests", "videos", "max_tokens", "max_batch", "repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.sweep is not None and (args.base_url is not None or min(args.sweep) < 1):
        ap.error(f"--sweep needs client counts >= 1 and starts its own servers (no --base-url), got {args.sweep}")

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
        device = device_name("cpu") if not torch.cuda.is_available() else device_name("cuda")
        if args.sweep is not None:
            model_dir = args.model or make_tiny_slotvlm(os.path.join(work, "tiny"))
            return sweep(args, work, model_dir, args.model or "tiny random (slotvlm.testing)", device, videos, warm)
        if args.base_url is None:
            model_dir = args.model or make_tiny_slotvlm(os.path.join(work, "tiny"))
            label = args.model or "tiny random (slotvlm.testing)"
            print(f"starting slotvlm serve --model {model_dir} ...", flush=True)
            proc, base = start_server(model_dir, work, args.max_batch)
        else:
            base, label, device = args.base_url, "remote", "unknown (remote server)"
        from openai import OpenAI

        model = OpenAI(base_url=base, api_key=args.api_key).models.list().data[0].id
        asyncio.run(run_load(base, args.api_key, model, [warm], 1, 1, 2))  # load everything once
        row = _measure(base, args.api_key, model, videos, args.clients, args.requests, args.max_tokens)
    finally:
        if proc is not None:
            _stop(proc)
    row.update(device=device, torch=torch.__version__, model=label, videos=args.videos)
    print(f"\nserver: {base} ({label}); device: {device}; torch {torch.__version__}; commit {row['commit']}; "
          f"load average {row['loadavg_1m']}")
    keys = ["clients", "requests", "ok", "errors", "req_per_s", "p50_ms", "p99_ms", "ttft_p50_ms", "ttft_p99_ms",
            "cache_hit_rate", "mean_batch", "loadavg_1m"]
    print("  ".join(f"{k:>14}" for k in keys))
    print("  ".join(f"{str(row[k]):>14}" for k in keys))
    out = ROOT / "bench" / "results" / "serve.csv" if args.save else Path(work) / "serve.csv"
    append_csv(out, [row], COLUMNS)
    print(f"{'appended' if args.save else 'wrote'} 1 row to {out}" + ("" if args.save else " (use --save for bench/results)"))
    return 0 if row["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
