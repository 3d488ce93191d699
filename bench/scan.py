#!/usr/bin/env python
"""Selective-scan benchmark: the fused Triton scan (slotvlm) vs the sequential PyTorch reference
vs a PyTorch parallel scan, in one process on one device.

Providers (``--providers``):
  slotvlm      the Triton kernels (``selective_scan(..., backend="triton")``; CUDA only here — on
               CPU they only run under the interpreter, which tests them but is no benchmark)
  reference    ``selective_scan_ref``: a loop over time, fp32 state (the spec, the CPU path)
  parallel     ``selective_scan_parallel``: Hillis–Steele doubling over time, ceil(log2 T) steps
  compile      ``torch.compile`` of the parallel scan (CUDA only: a CPU compile takes minutes)

Modes (``--modes``): ``fwd`` (no autograd graph) and ``fwd+bwd`` (gradients of u, delta, A, B, C, D).

Shapes (``--shapes``; R rows = batch x slots, T steps, Dc channels, S state size; bf16 on GPU):
  slotssm-video   R=64  (8 videos x 8 slots)  T=256  Dc=2048 S=16   SlotSSM, dim 1024, expand 2
  slotvlm-events  R=320 (40 videos x 8 slots) T=180  Dc=2048 S=16   Slot-VLM's event branch
  long            R=8                         T=4096 Dc=1024 S=16   one long sequence per row

Without CUDA, the reference and parallel providers run the same problems scaled down, in fp32,
and the skipped providers are printed. Every run appends rows to ``bench/results/<device>.csv``
with the columns ``timestamp,commit,device,torch,triton,shape,mode,provider,dtype,ms,tflops,gbps,
peak_mem_mb`` (the same as ``bench/slot_attn.py``). FLOP and byte counts come from :func:`flops`
and :func:`bytes_moved`, identical for every provider (so speedups are time ratios); ms is the
median of ``triton.testing.do_bench`` on GPU, of repeated wall-clock runs on CPU.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import add_output_args, append_rows, commit, device_name, time_cpu, time_gpu, triton_version  # noqa: E402

PROVIDERS = ("slotvlm", "reference", "parallel", "compile")
GPU_ONLY = ("slotvlm", "compile")
MODES = ("fwd", "fwd+bwd")


@dataclass(frozen=True)
class Shape:
    R: int  # independent sequences (batch x slots)
    T: int  # time steps
    Dc: int  # channels
    S: int  # state size per channel


GPU_SHAPES = {
    "slotssm-video": Shape(64, 256, 2048, 16),
    "slotvlm-events": Shape(320, 180, 2048, 16),
    "long": Shape(8, 4096, 1024, 16),
}
CPU_SHAPES = {  # the same problems scaled down so that the CPU run takes seconds
    "slotssm-video": Shape(16, 64, 128, 8),
    "slotvlm-events": Shape(32, 45, 128, 8),
    "long": Shape(2, 512, 64, 8),
}


def flops(shape: Shape, mode: str) -> float:
    """Per (row, step, channel, state): decay exp + 2 multiplies + add for the state, multiply-add
    for the output ≈ 6 FLOPs forward; the backward recomputes the states and does ≈ 2x that."""
    fwd = 6.0 * shape.R * shape.T * shape.Dc * shape.S
    return fwd if mode == "fwd" else 3.0 * fwd


def bytes_moved(shape: Shape, mode: str, elem: int) -> float:
    """Compulsory HBM traffic. fwd: read u, delta, B, C; write y. fwd+bwd adds: read u, delta, dy,
    B, C; write du, ddelta, dB, dC (A, D and the states are negligible)."""
    big = shape.R * shape.T * shape.Dc
    small = shape.R * shape.T * shape.S
    if mode == "fwd":
        return elem * (3 * big + 2 * small)
    return elem * (8 * big + 6 * small)


def make_inputs(shape: Shape, device, dtype, requires_grad: bool):
    g = torch.Generator(device="cpu").manual_seed(0)
    R, T, Dc, S = shape.R, shape.T, shape.Dc, shape.S

    def rnd(*size, scale=1.0):
        return (torch.randn(*size, generator=g) * scale).to(device=device, dtype=dtype)

    u = rnd(R, T, Dc)
    delta = F.softplus(rnd(R, T, Dc) - 3.0)  # step sizes around 0.05, as after Mamba's dt init
    A = -torch.arange(1, S + 1, dtype=torch.float32, device=device).repeat(Dc, 1)
    B = rnd(R, T, S)
    C = rnd(R, T, S)
    D = torch.ones(Dc, device=device)
    args = [u, delta, A, B, C, D]
    if requires_grad:
        args = [a.requires_grad_() for a in args]
    return args


def make_case(shape: Shape, provider: str, mode: str, device, dtype):
    from slotvlm.ops.scan import selective_scan, selective_scan_parallel, selective_scan_ref

    if provider == "slotvlm":
        def fn_fwd(*a):
            return selective_scan(*a, backend="triton")
    elif provider == "reference":
        fn_fwd = selective_scan_ref
    elif provider == "parallel":
        fn_fwd = selective_scan_parallel
    elif provider == "compile":
        fn_fwd = torch.compile(selective_scan_parallel)
    else:
        raise ValueError(f"unknown provider {provider!r}")
    args = make_inputs(shape, device, dtype, requires_grad=mode == "fwd+bwd")
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fn_fwd(*args)
        return run
    dy = torch.randn(shape.R, shape.T, shape.Dc, device=device, dtype=dtype)

    def run_bwd():
        y, _ = fn_fwd(*args)
        return torch.autograd.grad(y, args, dy)
    return run_bwd


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Benchmark the selective scan: fused Triton kernels vs the sequential PyTorch "
        "reference vs a PyTorch parallel scan (and torch.compile of it on GPU). Prints a table and "
        "appends rows to <device>.csv (in bench/results/ only with --save). Without CUDA it runs the reference providers "
        "at reduced sizes in fp32 and says what it skipped.",
        epilog="Example: python bench/scan.py --shapes slotssm-video --modes fwd fwd+bwd",
    )
    p.add_argument("--shapes", nargs="+", default=list(GPU_SHAPES), choices=list(GPU_SHAPES), help="problem sizes (see the module docstring)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="fwd and/or fwd+bwd")
    p.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=PROVIDERS, help="implementations to time")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None, help="input dtype (default bf16 on GPU, fp32 on CPU; the state is fp32 always)")
    add_output_args(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    dtype = dtypes[args.dtype or ("bf16" if cuda else "fp32")]
    if not cuda and dtype != torch.float32:
        print(f"note: --dtype {args.dtype} on CPU runs the reference in that dtype (the state stays fp32)")
    shapes = GPU_SHAPES if cuda else CPU_SHAPES
    dev_name = device_name(device)
    timer = time_gpu if cuda else time_cpu
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    meta = dict(timestamp=stamp, commit=commit(), device=dev_name, torch=torch.__version__, triton=triton_version())
    print(f"device: {dev_name}   torch {meta['torch']}   triton {meta['triton']}   dtype {dtype}")

    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        def tqdm(x, **_):
            return x

    cases, skipped = [], []
    for name in args.shapes:
        for mode in args.modes:
            for provider in args.providers:
                if provider in GPU_ONLY and not cuda:
                    why = ("the Triton kernels need a CUDA GPU (on CPU they run only under the interpreter, in the tests)"
                           if provider == "slotvlm" else "torch.compile is only timed on GPU")
                    skipped.append(f"{provider:9s} {name} {mode}: {why}")
                    continue
                cases.append((name, mode, provider))

    rows = []
    elem = torch.finfo(dtype).bits // 8
    for name, mode, provider in tqdm(cases, desc="scan bench", unit="case"):
        shape = shapes[name]
        try:
            ms, p20, p80, peak = timer(make_case(shape, provider, mode, device, dtype))
        except Exception as exc:  # record and carry on
            skipped.append(f"{provider:9s} {name} {mode}: failed: {type(exc).__name__}: {str(exc)[:200]}")
            if cuda:
                torch.cuda.empty_cache()  # e.g. the parallel scan's O(R·T·Dc·S) memory at full size
            continue
        rows.append(dict(
            meta, shape=f"{name} R={shape.R} T={shape.T} Dc={shape.Dc} S={shape.S}", mode=mode, provider=provider,
            dtype=str(dtype).replace("torch.", ""), ms=f"{ms:.4f}",
            tflops=f"{flops(shape, mode) / ms / 1e9:.4f}", gbps=f"{bytes_moved(shape, mode, elem) / ms / 1e6:.2f}",
            peak_mem_mb="" if peak is None else f"{peak:.1f}",
        ))
        rows[-1]["_spread"] = f"{p20:.3f}-{p80:.3f}"

    print(f"\n{'shape':44s} {'mode':8s} {'provider':10s} {'ms':>10s} {'p20-p80':>17s} {'TFLOP/s':>8s} {'GB/s':>8s} {'peak MiB':>9s} {'vs reference':>12s}")
    base = {(r["shape"], r["mode"]): float(r["ms"]) for r in rows if r["provider"] == "reference"}
    for r in rows:
        ref = base.get((r["shape"], r["mode"]))
        speed = f"{ref / float(r['ms']):.2f}x" if ref else "-"
        print(f"{r['shape']:44s} {r['mode']:8s} {r['provider']:10s} {float(r['ms']):10.3f} {r['_spread']:>17s} "
              f"{float(r['tflops']):8.4f} {float(r['gbps']):8.1f} {r['peak_mem_mb'] or '-':>9s} {speed:>12s}")
    if skipped:
        print("\nskipped:")
        for line in skipped:
            print(f"  {line}")
    if not cuda:
        print("\nNo CUDA GPU on this machine: the slotvlm (Triton) and compile providers were skipped; sizes are the reduced CPU ones.")
    if rows and not args.no_csv:
        path = append_rows(rows, dev_name, args.csv, save=args.save)
        print(f"\nappended {len(rows)} rows to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
