"""Shared by the benchmarks in bench/: timing (do_bench on GPU, wall clock on CPU), the device /
commit / version stamps, and appending rows to ``<device>.csv`` with the common columns.

Where rows go: ``bench/results/`` (committed results) only with ``--save``; otherwise a folder
outside the checkout, ``$SLOTVLM_BENCH_DIR`` or ``<system temp>/slotvlm-bench``, so a quick run
leaves no untracked file. ``--csv FILE`` names the file explicitly; ``--no-csv`` writes nothing."""
from __future__ import annotations

import contextlib
import csv
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from slotvlm._sysinfo import cpu_name

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = "timestamp,commit,device,torch,triton,shape,mode,provider,dtype,ms,tflops,gbps,peak_mem_mb".split(",")


def time_gpu(fn) -> tuple[float, float, float, float]:
    """(median ms, p20, p80, peak MiB) with triton.testing.do_bench."""
    import triton

    fn()  # compile outside the measurement
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**20
    med, p20, p80 = triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
    return med, p20, p80, peak


def time_cpu(fn, budget_s: float = 0.5, max_reps: int = 20) -> tuple[float, float, float, None]:
    """(median ms, p20, p80, None) from repeated wall-clock runs after one warm-up."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget_s and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    q = torch.tensor(times).quantile(torch.tensor([0.5, 0.2, 0.8])).tolist()
    return q[0], q[1], q[2], None


def device_name(device) -> str:
    """``torch.cuda.get_device_name()`` on GPU; ``CPU <model> x<cores>`` otherwise."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_name()


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "none"


RESULTS = ROOT / "bench" / "results"
ENV_DIR = "SLOTVLM_BENCH_DIR"


def output_dir(save: bool = False) -> Path:
    """``bench/results/`` when ``save``; else ``$SLOTVLM_BENCH_DIR`` or ``<temp>/slotvlm-bench``."""
    if save:
        return RESULTS
    return Path(os.environ.get(ENV_DIR) or Path(tempfile.gettempdir()) / "slotvlm-bench")


def add_output_args(parser, default_name: str = "<device>.csv") -> None:
    """The ``--save`` / ``--csv`` / ``--no-csv`` flags every benchmark shares."""
    parser.add_argument(
        "--save", action="store_true",
        help=f"append the rows to bench/results/{default_name} (the committed results); without it they go to "
        f"${ENV_DIR} or <temp>/slotvlm-bench/, outside the checkout",
    )
    parser.add_argument("--csv", default=None, help="CSV file to append to (overrides --save)")
    parser.add_argument("--no-csv", action="store_true", help="print only, write nothing")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def append_rows(
    rows: list[dict], dev_name: str, csv_path: str | None = None, *, save: bool = False,
    columns: list[str] | None = None, file_name: str | None = None,
) -> Path:
    """Append ``rows`` (dicts with at least ``columns``, default :data:`COLUMNS`; other keys are
    ignored) to ``csv_path``, or to ``file_name`` (default ``<device slug>.csv``) in
    :func:`output_dir` (``bench/results/`` only when ``save``), writing the header to a new file."""
    columns = columns or COLUMNS
    path = Path(csv_path) if csv_path else output_dir(save) / (file_name or f"{slug(dev_name)}.csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)
    return path


def append_csv(path, rows: list[dict], fields: list[str]) -> Path:
    """Append ``rows`` to the CSV at ``path`` with columns ``fields``. A file written earlier with
    other columns is rewritten once with the union of both (old rows keep empty new cells), so a
    results file survives a benchmark gaining a column."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old_rows, old_fields = [], []
    if path.exists() and path.stat().st_size:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            old_fields, old_rows = list(reader.fieldnames or []), list(reader)
    merged = old_fields + [f for f in fields if f not in old_fields]
    mode = "a" if merged == old_fields else "w"
    with path.open(mode, newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=merged, extrasaction="ignore")
        if mode == "w":
            writer.writeheader()
            writer.writerows(old_rows)
        writer.writerows(rows)
    return path


@contextlib.contextmanager
def triton_run_replaced(run):
    """Replace Triton's launch entry points (``JITFunction.run`` and, when importable,
    ``InterpretedFunction.run``: what ``kernel[grid](...)`` ends in, below ``@triton.heuristics``)
    by ``run(jit, *args, **kwargs)`` for the duration, restoring them afterwards."""
    from triton.runtime.jit import JITFunction

    classes = [JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction

        classes.append(InterpretedFunction)
    except ImportError:  # pragma: no cover
        pass
    saved = [(c, c.__dict__.get("run")) for c in classes]
    for c in classes:
        c.run = run
    try:
        yield
    finally:
        for c, old in saved:
            if old is None:
                del c.run
            else:
                c.run = old
