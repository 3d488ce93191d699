#!/usr/bin/env python
"""Host (CPU) cost of one fused ``SlotAttention`` call on the launch path: µs per call.

At launch-bound shapes (object discovery: B=64, N=4096, D=64, K=7, 3 iterations) a GPU finishes
the work of a call in well under a millisecond, so the Python and dispatcher work that issues it
decides the time (issue 25). This script measures that work on the CPU, without a GPU:

* The module runs the path it dispatches to for ``backend="triton"`` (the folded one-head
  iteration: custom ops ``slotvlm::*`` plus aten GEMMs), on CPU tensors with
  ``TRITON_INTERPRET=1`` set, so the same Python runs as on CUDA up to the kernel launch.
* **Triton kernels are not run**: ``JITFunction.run`` / ``InterpretedFunction.run`` (what
  ``kernel[grid](...)`` ends in, below ``@triton.heuristics``) are replaced by a no-op stub, so
  the launchers' Python (tiles, grids, output allocation, heuristics) is timed and the kernel is
  not. Outputs stay uninitialised; the numbers are garbage and not looked at. On a GPU the real
  ``JITFunction.run`` adds its own cost (argument binding, cache lookup, driver launch) per launch;
  that part cannot be measured here.
* The module's input LayerNorm (one aten op over the full ``[B, N, D]``) is replaced by
  ``nn.Identity`` so the CPU does not spend milliseconds computing it at the object-discovery
  shape; it is one aten op's host cost on a GPU. The other aten ops touch only ``[B, K, D]``-sized
  tensors (and the weights), whose CPU compute is small but still included: the numbers are an
  upper bound on the host cost of those ops.
* Paths timed: ``module_fwd`` (``m(x)`` under ``torch.no_grad``; with the Identity input norm the
  whole-iteration kernel does not apply, so this is the folded path), ``module_fwd_whole`` (the
  same call with the module's own LayerNorm: the whole-iteration kernel, 2 launches), ``module_fwd_bwd``
  (``m(x).sum().backward()`` with x and the parameters requiring grad), ``custom_op`` (one
  ``slotvlm::slot_attn_fold_fwd`` call through :func:`slotvlm.ops.fused.fold_step`, no grad: the
  custom-op dispatch + entry guard + launcher), and ``aten_add`` (``torch.add`` of two ``[8]``
  tensors) as the reference an aten op costs.
* One thread (``torch.set_num_threads(1)``), a warm-up, then the median over ``--calls`` calls
  (p20/p80 printed too).

Writes one row per (shape, path) to ``host_cost.csv`` (``bench/results/`` with ``--save``,
otherwise ``$SLOTVLM_BENCH_DIR`` or ``<temp>/slotvlm-bench``) with columns timestamp, commit,
device, torch, shape, path, us_per_call (plus p20/p80 and calls).

    python bench/host_cost.py                 # both shapes, all paths (about a minute)
    python bench/host_cost.py --save --note before
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # the CPU launch path; must precede `import triton`

import argparse  # noqa: E402
import datetime as _dt  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "bench"))
from _common import add_output_args, append_csv, commit, device_name, output_dir, triton_run_replaced  # noqa: E402

SHAPES = {  # name: (B, N, D, K, iters)
    "object-discovery": (64, 4096, 64, 7, 3),
    "tiny": (2, 16, 16, 3, 3),
}
PATHS = ("module_fwd", "module_fwd_whole", "module_fwd_bwd", "custom_op", "aten_add")
COLUMNS = ["timestamp", "commit", "device", "torch", "shape", "path", "us_per_call", "p20_us", "p80_us", "calls",
           "note"]


def _no_launch(jit, *args, **kwargs):
    """Stands in for ``JITFunction.run``: the launch returns at once, nothing runs."""


def triton_launches_stubbed():
    """Every Triton launch (``kernel[grid](...)``) returns at once without running the kernel."""
    return triton_run_replaced(_no_launch)


def median_us(fn, calls: int, warmup: int = 5) -> tuple[float, float, float]:
    """(median, p20, p80) µs per call of ``fn()`` over ``calls`` timed calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) / 1e3)
    q = torch.tensor(times, dtype=torch.float64).quantile(torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64))
    return tuple(float(v) for v in q)


def make_calls(shape: str) -> dict:
    """``{path: fn}`` for one shape (modules and tensors built once, outside the timing)."""
    from slotvlm import SlotAttention
    from slotvlm.ops.fused import fold_step

    B, N, D, K, iters = SHAPES[shape]
    torch.manual_seed(0)
    m = SlotAttention(K, D, iters=iters, backend="triton")
    m.norm_input = nn.Identity()  # see the docstring: one full-size aten op, not host cost
    x = torch.randn(B, N, D)
    xg = x.clone().requires_grad_()
    qc = torch.randn(B, K, D + 1)
    a, b = torch.randn(8), torch.randn(8)

    whole = SlotAttention(K, D, iters=iters, backend="triton")  # its LayerNorm runs inside the (stubbed) kernel

    def fwd():
        with torch.no_grad():
            m(x)

    def fwd_whole():
        with torch.no_grad():
            whole(x)

    def fwd_bwd():
        m(xg).sum().backward()
        xg.grad = None
        for p in m.parameters():
            p.grad = None

    def custom_op():
        with torch.no_grad():
            fold_step(qc, x, None, None, N, D**-0.5, 1e-8, False)

    return {"module_fwd": fwd, "module_fwd_whole": fwd_whole, "module_fwd_bwd": fwd_bwd, "custom_op": custom_op, "aten_add": lambda: torch.add(a, b)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    p.add_argument("--calls", type=int, default=200, help="timed calls per (shape, path) (default 200)")
    p.add_argument("--note", default="", help="free text stored in the rows' note column (e.g. before/after)")
    add_output_args(p, "host_cost.csv")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # uninitialised outputs may hold denormals; keep the aten ops' cost honest
    dev = device_name("cpu")
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    rev = commit()
    rows = []
    print(f"host cost per call on {dev} (Triton launches stubbed, 1 thread, median of {args.calls})")
    print(f"{'shape':<18} {'path':<16} {'us/call':>10} {'p20':>10} {'p80':>10}")
    with triton_launches_stubbed():
        for shape in args.shapes:
            calls = make_calls(shape)
            for path in args.paths:
                if path == "aten_add" and shape != args.shapes[0]:
                    continue  # shape-independent: once
                med, p20, p80 = median_us(calls[path], args.calls)
                print(f"{shape:<18} {path:<16} {med:>10.1f} {p20:>10.1f} {p80:>10.1f}")
                rows.append(dict(
                    timestamp=stamp, commit=rev, device=dev, torch=torch.__version__,
                    shape="B={}, N={}, D={}, K={}, iters={}".format(*SHAPES[shape]) if path != "aten_add" else "[8] + [8]",
                    path=path, us_per_call=f"{med:.1f}", p20_us=f"{p20:.1f}", p80_us=f"{p80:.1f}", calls=args.calls,
                    note=args.note,
                ))
    if not args.no_csv:
        out = Path(args.csv) if args.csv else output_dir(args.save) / "host_cost.csv"
        append_csv(out, rows, COLUMNS)
        print(f"rows appended to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
