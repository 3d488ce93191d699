#!/usr/bin/env python
"""Everything a short GPU window should run, in one command that finishes in under 8 minutes on one
H100/H200 and writes everything into ONE folder.

Steps (each a subprocess with its own log and time cap, under one overall deadline):
  env        nvidia-smi, torch/triton/CUDA versions, the commit               -> env.txt
  tests      the GPU tests, compiled kernels (TRITON_INTERPRET=0): ``pytest -m cuda tests/`` and
             every ``tests/test_*gpu*.py`` but this script's own test          -> tests.log
  bench      ``bench/slot_attn.py``: all shapes and modes, providers slotvlm, eager and the PyPI
             ``slot-attention`` package                                         -> slot_attn.csv, bench.log
  compile    ``bench/slot_attn.py`` providers eager + torch.compile (``--compile-mode``, default
             ``default``: max-autotune's autotuning does not fit the window) for the module
             fwd+bwd at the three benchmark problems                            -> slot_attn.csv, compile.log
  traffic    ``bench/traffic.py`` (the model, counted on the CPU, run beside the GPU steps)
                                                                                -> traffic-model.csv, traffic.log
  compare    measured ms (this GPU) against the model's ms for the matching device -> compare.csv, summary.md

``--cpu-smoke`` runs the same steps end to end on a machine without a GPU, reduced (the GPU tests
skip, the benchmarks at their CPU sizes, the model on one small shape); CI runs it.

    python bench/gpu_check.py                       # on the GPU machine; prints the folder
    python bench/gpu_check.py --out /tmp/gpu-run    # choose the folder
    python bench/gpu_check.py --cpu-smoke           # the reduced end-to-end run (about a minute)

Afterwards: commit the rows of ``slot_attn.csv`` to ``bench/results/<device>.csv`` (or rerun
``bench/slot_attn.py --save``) and put ``summary.md``'s table in the README.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from _common import output_dir  # noqa: E402

TOTAL_S = 8 * 60 - 20  # the whole run, with a margin for start-up


def _steps(args, out: Path) -> list[dict]:
    py = sys.executable
    gpu_env = {"TRITON_INTERPRET": "0"}
    smoke = args.cpu_smoke
    gpu_files = sorted(
        str(Path(p).relative_to(ROOT)) for p in glob.glob(str(ROOT / "tests" / "test_*gpu*.py"))
        if Path(p).name != "test_gpu_check.py"  # this script's own test would run it again
    )
    test_targets = gpu_files if smoke else ["tests/"]
    bench = [py, "bench/slot_attn.py", "--csv", str(out / "slot_attn.csv")]
    tests_cap, files_cap, bench_cap, compile_cap = (60, 60, 120, 60) if smoke else (75, 90, 150, 100)
    steps = [
        dict(name="env", cmd=[py, "-c", _ENV_SNIPPET], cap=30, log="env.txt"),
        dict(name="tests (-m cuda)", cmd=[py, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", *test_targets],
             cap=tests_cap, log="tests.log", env=gpu_env, ok_codes=(0, 5)),
        dict(name="tests (GPU files)", cmd=[py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *gpu_files],
             cap=files_cap, log="tests.log", env=gpu_env, ok_codes=(0, 5)),
    ]
    if smoke:
        bench_args = ["--shapes", "object-discovery", "--modes", "fwd", "step-fwd"]
        compile_args = ["--shapes", "object-discovery", "--modes", "fwd"]
        traffic_args = ["--small", "--shapes", "object-discovery", "--modes", "fwd", "--dtypes", "bf16",
                        "--providers", "slotvlm", "eager"]
    else:
        bench_args, traffic_args = [], []
        compile_args = ["--shapes", "vlm-slow", "vlm-fast", "object-discovery", "--modes", "fwd+bwd"]
    steps.append(dict(name="bench", cmd=bench + bench_args + ["--providers", "slotvlm", "slotvlm-folded", "eager", "slot-attention"],
                      cap=bench_cap, log="bench.log", env=gpu_env))
    steps.append(dict(name="compile", cmd=bench + compile_args + ["--providers", "eager", "compile", "--compile-mode",
                                                                   args.compile_mode],
                      cap=compile_cap, log="compile.log", env=gpu_env))
    # the model counts on the CPU: it runs beside the GPU steps, started first and collected last
    steps.append(dict(name="traffic", cmd=[py, "bench/traffic.py", *traffic_args, "--csv", str(out / "traffic-model.csv")],
                      cap=400, log="traffic.log", background=True))
    if smoke:  # a shared CI machine can be slow: the caps guard the GPU window, not the smoke run
        for step in steps:
            step["cap"] *= 5
    return steps


_ENV_SNIPPET = r"""
import subprocess, sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda)
try:
    import triton; print("triton", triton.__version__)
except ImportError:
    print("triton: not installed")
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device:", p.name, "| SMs", p.multi_processor_count, "| memory GiB", round(p.total_memory / 2**30, 1))
try:
    print(subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout)
except (OSError, subprocess.SubprocessError) as exc:
    print("nvidia-smi:", exc)
try:
    print("commit", subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip())
except OSError:
    pass
"""


def _env(step) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **step.get("env", {})}


def _start(cmd, env, fh) -> subprocess.Popen:
    """Start a step in its own process group, so a timeout can stop everything it started."""
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_steps(steps: list[dict], out: Path, deadline: float) -> list[dict]:
    results, background = [], []
    for step in steps:  # background steps start now and are collected after the others
        if step.get("background"):
            fh = (out / step["log"]).open("a")
            fh.write(f"$ {' '.join(step['cmd'])}\n")
            fh.flush()
            proc = _start(step["cmd"], _env(step), fh)
            background.append((step, proc, fh, time.monotonic()))
    for step in steps:
        if step.get("background"):
            continue
        left = deadline - time.monotonic()
        log = out / step["log"]
        if left < 10:
            results.append(dict(step=step["name"], status="skipped (no time left)", seconds=0.0, log=step["log"]))
            print(f"  {step['name']:<18} skipped (no time left)", flush=True)
            continue
        cap = min(step["cap"], left)
        env = _env(step)
        t0 = time.monotonic()
        with log.open("a") as fh:
            fh.write(f"$ {' '.join(step['cmd'])}\n")
            fh.flush()
            _finish(step, _start(step["cmd"], env, fh), cap, t0, results, str(log))
    for step, proc, fh, t0 in background:
        wait = max(1.0, min(step["cap"] - (time.monotonic() - t0), deadline - time.monotonic()))
        _finish(step, proc, wait, t0, results, f"{out / step['log']} (ran beside the others)")
        fh.close()
    return results


def _finish(step, proc, timeout, t0, results, where) -> None:
    """Wait for a step (stopping it at the timeout) and record its status and time."""
    try:
        code = proc.wait(timeout=timeout)
        status = "ok" if code in step.get("ok_codes", (0,)) else f"FAILED (exit {code})"
    except subprocess.TimeoutExpired:
        _kill(proc)
        status = f"TIMED OUT after {time.monotonic() - t0:.0f} s"
    seconds = time.monotonic() - t0
    results.append(dict(step=step["name"], status=status, seconds=round(seconds, 1), log=step["log"]))
    print(f"  {step['name']:<18} {status:<24} {seconds:6.1f} s  -> {where}", flush=True)


def compare(out: Path) -> list[dict]:
    """Measured rows of slot_attn.csv (a GPU whose name contains H100/H200) against the model rows."""
    measured_path, model_path = out / "slot_attn.csv", out / "traffic-model.csv"
    if not measured_path.exists() or not model_path.exists():
        return []
    model = {}
    for r in csv.DictReader(model_path.open()):
        if r["dtype"] == "bfloat16":
            model[(r["device"].split()[0], r["shape"], r["mode"], r["provider"])] = float(r["ms"])
    rows = []
    for r in csv.DictReader(measured_path.open()):
        dev = next((d for d in ("H200", "H100") if d in r["device"].upper()), None)
        key = (dev, r["shape"], r["mode"], r["provider"])
        if dev is None or key not in model or r["dtype"] != "bfloat16":
            continue
        rows.append(dict(device=r["device"], shape=r["shape"], mode=r["mode"], provider=r["provider"],
                         measured_ms=r["ms"], model_ms=f"{model[key]:.4f}", measured_over_model=f"{float(r['ms']) / model[key]:.2f}"))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None,
                   help="the one output folder (default: $SLOTVLM_BENCH_DIR or <temp>/slotvlm-bench, /gpu-check-<UTC time>)")
    p.add_argument("--cpu-smoke", action="store_true", help="reduced end-to-end run for a machine without a GPU")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode for the compile step (default: default)")
    p.add_argument("--budget-s", type=float, default=None,
                   help=f"overall deadline in seconds (default: {TOTAL_S}, or 1800 with --cpu-smoke)")
    args = p.parse_args(argv)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or output_dir(False) / f"gpu-check-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    print(f"gpu_check{' (--cpu-smoke)' if args.cpu_smoke else ''}: writing everything to {out}")
    budget = args.budget_s if args.budget_s is not None else (1800 if args.cpu_smoke else TOTAL_S)
    deadline = time.monotonic() + budget
    results = run_steps(_steps(args, out), out, deadline)
    rows = compare(out)
    if rows:
        with (out / "compare.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    lines = [f"# gpu_check {stamp}{' (cpu smoke)' if args.cpu_smoke else ''}", "", "| step | status | seconds | log |",
             "|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['status']} | {r['seconds']} | {r['log']} |" for r in results]
    lines += ["", "## measured vs model (bf16)", ""]
    if rows:
        lines += ["| device | shape | mode | provider | measured ms | model ms | measured / model |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['device']} | {r['shape']} | {r['mode']} | {r['provider']} | {r['measured_ms']} | {r['model_ms']} "
                  f"| {r['measured_over_model']} |" for r in rows]
    else:
        lines.append("No measured H100/H200 rows to compare with the model (no such GPU in this run).")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "steps.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(lines))
    print(f"\nall output in {out}")
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
