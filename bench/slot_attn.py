#!/usr/bin/env python
"""Headline benchmark: fused slot attention (slotvlm) vs eager PyTorch, torch.compile and the
``slot-attention`` package, in one process on one device.

What is timed (``--modes``):
  fwd            the whole SlotAttention module forward (3 iterations), no autograd graph
  fwd+bwd        module forward + backward (gradients of all parameters)
  step-fwd       one attention step alone (logits, softmax over slots, weighted mean, attn·v)
  step-fwd+bwd   the attention step forward + backward (dq, dk, dv)

Providers (``--providers``): slotvlm (Triton kernels), eager (the PyTorch reference = backend
"torch"), compile (torch.compile(mode="max-autotune") of the reference), slot-attention (the PyPI
package 1.5.x, module modes only, when installed).

Shapes (``--shapes``; bf16 on GPU, K slots, D width, P problems of N tokens):
  vlm-slow          P=320  N=256  D=1024 K=8 hidden=1024   (40 videos x 8 frames, 16x16 tokens)
  vlm-fast          P=640  N=180  D=1024 K=8 hidden=1024   (40 videos x 16 positions, T=180)
  object-discovery  P=64   N=4096 D=64   K=7 hidden=128    (CLEVR-style 64x64 feature maps)
  video-objects     P=32   N=16384 D=128 K=11 hidden=256   (video object-centric models: 128x128 feature maps)
  vlm-fast-varlen   P=640  N=60..300 (packed, cu_seqlens) D=1024 K=8; eager/compile pad + mask

On a machine without CUDA only the reference providers run (eager, and slot-attention when
installed), at reduced sizes, in fp32; what is skipped is printed. Every run appends rows to
``<device>.csv`` in ``bench/results/`` with ``--save``, otherwise in ``$SLOTVLM_BENCH_DIR`` or
``<temp>/slotvlm-bench/`` (outside the checkout; the path is printed), with the columns
``timestamp,commit,device,torch,triton,shape,mode,provider,dtype,ms,tflops,gbps,peak_mem_mb``.
FLOP and byte counts are the formulas in :func:`flops` and :func:`bytes_moved` (the same for every
provider, so speedups are time ratios); ms is the median of ``triton.testing.do_bench`` on GPU
(quantiles 0.2/0.8 printed), of repeated wall-clock runs on CPU.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import torch  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from _common import add_output_args, append_rows, commit, device_name, time_cpu, time_gpu, triton_version  # noqa: E402
PROVIDERS = ("slotvlm", "eager", "compile", "slot-attention")
# on request: slotvlm-kv, the Triton step on explicit k/v (no projection folding); slotvlm-folded, the
# folded per-iteration path where the whole-iteration kernel would run (fwd at D <= 128), beside it
EXTRA_PROVIDERS = ("slotvlm-kv", "slotvlm-folded")
MODES = ("fwd", "fwd+bwd", "step-fwd", "step-fwd+bwd")
ITERS = 3
COMPILE_MODE = "max-autotune"  # --compile-mode; rows of another mode name the provider compile:<mode>


@dataclass(frozen=True)
class Shape:
    P: int
    N: int  # tokens per problem (the longest one for varlen)
    D: int
    K: int
    hidden: int
    varlen: bool = False

    def lengths(self) -> list[int]:
        """Token counts per problem: all N, or (varlen) 16 positions per video with T in 60..N."""
        if not self.varlen:
            return [self.N] * self.P
        lo = max(1, self.N // 5)
        per_video = 16
        return [lo + (i // per_video * 97) % (self.N - lo + 1) for i in range(self.P)]


GPU_SHAPES = {
    "vlm-slow": Shape(320, 256, 1024, 8, 1024),
    "vlm-fast": Shape(640, 180, 1024, 8, 1024),
    "object-discovery": Shape(64, 4096, 64, 7, 128),
    "video-objects": Shape(32, 16384, 128, 11, 256),
    "vlm-fast-varlen": Shape(640, 300, 1024, 8, 1024, varlen=True),
}
CPU_SHAPES = {  # the same problems scaled down so the CPU run takes seconds
    "vlm-slow": Shape(16, 64, 128, 8, 128),
    "vlm-fast": Shape(32, 45, 128, 8, 128),
    "object-discovery": Shape(4, 512, 64, 7, 128),
    "video-objects": Shape(2, 1024, 128, 11, 256),
    "vlm-fast-varlen": Shape(32, 75, 128, 8, 128, varlen=True),
}

# Dense bf16 tensor-core peak (FLOP/s) and HBM bandwidth (B/s) for the roofline column.
PEAKS = [
    (("H100", "PCIE"), 756e12, 2.0e12),
    (("H100",), 989e12, 3.35e12),
    (("H200",), 989e12, 4.8e12),
    (("A100",), 312e12, 2.0e12),
]


class Skip(Exception):
    """A provider/mode/shape combination that cannot run here (the message says why)."""


# ----------------------------------------------------------------------------- cost models
def flops(shape: Shape, mode: str) -> float:
    """Model FLOPs (multiply-add = 2; no recomputation counted; tokens = real tokens).

    Module forward: k/v projections 4·T·D² plus per iteration q projection 2·PK·D², logits and
    attn·v 4·PK·(T/P)·D, GRU GEMMs 12·PK·D², MLP 4·PK·D·hidden. Backward = 2x forward. These are
    the reference algorithm's FLOPs; slotvlm's one-head path folds the k/v projections into the
    slots and skips most of them, so module TFLOP/s are "reference work per second" and the
    roofline column is only filled for the step modes.
    Step forward 4·K·T·D; step backward 8·K·T·D (dW, dv, dq, dk).
    """
    T = sum(shape.lengths())
    P, D, K, Hd = shape.P, shape.D, shape.K, max(shape.D, shape.hidden)
    if mode.startswith("step"):
        f = 4.0 * K * T * D
        return f * (3 if mode.endswith("bwd") else 1)
    per_iter = 2.0 * P * K * D * D + 4.0 * K * T * D + 12.0 * P * K * D * D + 4.0 * P * K * D * Hd
    f = 4.0 * T * D * D + ITERS * per_iter
    return f * (3 if mode.endswith("bwd") else 1)


def bytes_moved(shape: Shape, mode: str, elem: int) -> float:
    """Compulsory memory traffic (bytes), the denominator of GB/s.

    Step forward: read k, v once (2·T·D), read q, write updates (2·P·K·D). Step backward: read
    q, k, v, out, dout, write dq, dk, dv (4·T·D + 4·P·K·D). Module forward: read inputs, write
    and read back the normalised inputs, write k and v (4·T·D), then read k, v each iteration
    (2·T·D·iters); weights once. Module backward: per iteration read k, v and write dk, dv
    (4·T·D·iters), then the projections' backward (3·T·D).
    """
    T = sum(shape.lengths())
    P, D, K, Hd = shape.P, shape.D, shape.K, max(shape.D, shape.hidden)
    slots = P * K * D
    if mode.startswith("step"):
        b = 2.0 * T * D + 2.0 * slots
        if mode.endswith("bwd"):
            b += 4.0 * T * D + 4.0 * slots
        return b * elem
    weights = 3 * D * D + 6 * D * D + 2 * D * Hd
    b = 4.0 * T * D + ITERS * (2.0 * T * D + 8.0 * slots) + weights
    if mode.endswith("bwd"):
        b += ITERS * (4.0 * T * D + 8.0 * slots) + 3.0 * T * D + 2 * weights
    return b * elem


# ------------------------------------------------------------------------------- providers
def _module(shape: Shape, backend: str, device, dtype):
    from slotvlm import SlotAttention

    torch.manual_seed(0)
    return SlotAttention(shape.K, shape.D, iters=ITERS, hidden_dim=shape.hidden, backend=backend).to(device, dtype)


def _inputs(shape: Shape, device, dtype):
    """(padded x [P, N, D], mask [P, N] or None, packed x [T, D], cu_seqlens int32 [P + 1])."""
    g = torch.Generator().manual_seed(1)
    lengths = shape.lengths()
    x = torch.randn(shape.P, shape.N, shape.D, generator=g).to(device, dtype)
    mask = None
    if shape.varlen:
        mask = (torch.arange(shape.N)[None, :] < torch.tensor(lengths)[:, None]).to(device)
        x = x * mask[..., None]
    packed = x[mask] if mask is not None else x.reshape(-1, shape.D)
    cu = torch.zeros(shape.P + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    return x, mask, packed, cu.to(device)


def _module_case(shape, provider, mode, device, dtype):
    if provider == "slotvlm-folded" and (mode != "fwd" or shape.D > 128 or shape.varlen):
        raise Skip("slotvlm-folded differs from slotvlm only in the no-graph forward at D <= 128 (the whole-iteration kernel)")
    x, mask, packed, cu = _inputs(shape, device, dtype)
    if provider == "slot-attention":
        try:
            from slot_attention import SlotAttention as Peer
        except ImportError as exc:
            raise Skip("the slot-attention package is not installed (pip install slot-attention==1.5.2)") from exc
        if shape.varlen:
            raise Skip("the slot-attention package has no padding mask, so no variable-length input")
        ours = _module(shape, "torch", device, dtype)
        model = Peer(shape.K, shape.D, iters=ITERS, hidden_dim=shape.hidden).to(device, dtype)
        model.load_state_dict(ours.state_dict(), strict=True)
        call = lambda: model(x)  # noqa: E731
    else:
        backend = "triton" if provider.startswith("slotvlm") else "torch"
        model = _module(shape, backend, device, dtype)
        if provider == "slotvlm-kv":
            model.fold_projections = False
        if provider == "slotvlm-folded":
            model.whole_iteration = False
        if provider == "compile":
            model = torch.compile(model, mode=COMPILE_MODE)
        if provider.startswith("slotvlm") and shape.varlen:
            max_len = max(shape.lengths())
            call = lambda: model.forward_varlen(packed, cu, max_seqlen=max_len)  # noqa: E731
        else:
            call = lambda: model(x, mask=mask)  # noqa: E731
    params = [p for p in model.parameters()]
    if mode == "fwd":

        def fn():
            with torch.no_grad():
                return call()

        return fn

    def fn_bwd():
        for p in params:
            p.grad = None
        out = call()
        out.backward(torch.ones_like(out))

    return fn_bwd


def _step_case(shape, provider, mode, device, dtype):
    from slotvlm.ops.slot_attention_ref import slot_attention_step_ref

    if provider == "slot-attention":
        raise Skip("the slot-attention package has no separate attention step")
    if provider in ("slotvlm-kv", "slotvlm-folded"):
        raise Skip(f"the step modes are the same for {provider} as for slotvlm")
    g = torch.Generator().manual_seed(2)
    x, mask, packed, cu = _inputs(shape, device, dtype)
    P, K, D = shape.P, shape.K, shape.D
    q = torch.randn(P, K, 1, D, generator=g).to(device, dtype)
    k = x.view(P, shape.N, 1, D).clone()
    v = x.flip(-1).reshape(P, shape.N, 1, D).clone()
    scale = D**-0.5
    if provider == "slotvlm":
        from slotvlm.ops import fused

        if shape.varlen:
            kp, vp = k[mask].contiguous(), v[mask].contiguous()
            max_len = max(shape.lengths())
            tensors = [q, kp, vp]
            call = lambda q, k, v: fused.slot_attention_step_varlen(q, k, v, cu, max_len, scale=scale)[0]  # noqa: E731
        else:
            tensors = [q, k, v]
            call = lambda q, k, v: fused.slot_attention_step(q, k, v, mask, scale=scale)[0]  # noqa: E731
    else:
        step = slot_attention_step_ref
        if provider == "compile":
            step = torch.compile(slot_attention_step_ref, mode=COMPILE_MODE)
        tensors = [q, k, v]
        call = lambda q, k, v: step(q, k, v, mask, scale=scale)[0]  # noqa: E731
    if mode == "step-fwd":
        return lambda: call(*tensors)
    tensors = [t.requires_grad_() for t in tensors]

    def fn_bwd():
        for t in tensors:
            t.grad = None
        out = call(*tensors)
        out.backward(torch.ones_like(out))

    return fn_bwd


def make_case(shape: Shape, provider: str, mode: str, device, dtype):
    """A zero-argument callable running one (shape, provider, mode), or raise :class:`Skip`."""
    cuda = torch.device(device).type == "cuda"
    if provider.startswith("slotvlm") and not cuda:
        raise Skip("the Triton kernels need a CUDA GPU (on CPU they only run under the slow interpreter)")
    if provider == "compile" and not cuda:
        raise Skip("torch.compile(mode='max-autotune') is benchmarked on GPU only (on CPU it would spend minutes compiling)")
    if mode.startswith("step"):
        return _step_case(shape, provider, mode, device, dtype)
    return _module_case(shape, provider, mode, device, dtype)


# ---------------------------------------------------------------------------------- timing
def _release(cuda: bool, provider: str) -> None:
    """Free the previous case's tensors (and compiled graphs) so peak memory is per case."""
    import gc

    if provider == "compile":
        torch._dynamo.reset()
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------- reporting
def roofline(device: str, dtype: torch.dtype):
    if dtype not in (torch.bfloat16, torch.float16):
        return None
    upper = device.upper()
    for words, peak_flops, peak_bw in PEAKS:
        if all(w in upper for w in words):
            return peak_flops, peak_bw
    return None


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0]
        + " Prints a table and appends rows to <device>.csv (in bench/results/ with --save). Without CUDA it runs the "
        "reference providers at reduced sizes and says what it skipped.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument("--shapes", nargs="+", default=list(GPU_SHAPES), choices=list(GPU_SHAPES), help="problem shapes")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="what to time")
    p.add_argument(
        "--providers", nargs="+", default=list(PROVIDERS), choices=PROVIDERS + EXTRA_PROVIDERS,
        help="implementations (on request: slotvlm-kv, module modes without projection folding; slotvlm-folded, "
             "the folded per-iteration path where the whole-iteration kernel would run)",
    )
    p.add_argument("--dtype", default=None, choices=("bf16", "fp16", "fp32"), help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--full-size", action="store_true", help="on CPU, use the GPU sizes (slow)")
    p.add_argument(
        "--compile-mode", default="max-autotune",
        choices=("max-autotune", "default", "reduce-overhead", "max-autotune-no-cudagraphs"),
        help="torch.compile mode of provider compile (rows of another mode than max-autotune say compile:<mode>)",
    )
    add_output_args(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    threads = torch.get_num_threads()
    try:
        return _run(parse_args(argv))
    finally:
        torch.set_num_threads(threads)


def _run(args) -> int:
    global COMPILE_MODE
    COMPILE_MODE = args.compile_mode
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    if cuda and os.environ.get("TRITON_INTERPRET") == "1":
        print("note: TRITON_INTERPRET=1 is set; unset it to benchmark compiled kernels", file=sys.stderr)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if cuda else "fp32")
    ]
    shapes = GPU_SHAPES if (cuda or args.full_size) else CPU_SHAPES
    dev_name = device_name(device)
    peaks = roofline(dev_name, dtype)
    meta = dict(commit=commit(), device=dev_name, torch=torch.__version__, triton=triton_version())
    print(f"device: {dev_name} | torch {meta['torch']} | triton {meta['triton']} | commit {meta['commit']} | {dtype}")
    if not cuda:
        torch.set_num_threads(1)  # intra-op threads stall badly on a shared 2-core machine
        print(
            "No CUDA GPU (CPU timings use 1 thread): running the reference providers only, at reduced sizes "
            f"({', '.join(f'{n} P={s.P} N={s.N} D={s.D}' for n, s in CPU_SHAPES.items())}). "
            "The fused Triton kernels (provider slotvlm) and torch.compile need a GPU; run this "
            "script on an H100/H200 for the headline numbers."
        )
    header = f"{'shape':<18}{'mode':<14}{'provider':<16}{'ms':>10}{'p20':>9}{'p80':>9}{'TFLOP/s':>9}{'GB/s':>9}{'roof%':>7}{'MiB':>9}{'x eager':>9}"
    print(header)
    print("-" * len(header))
    rows, skipped, failed = [], {}, []
    for shape_name in args.shapes:
        shape = shapes[shape_name]
        for mode in args.modes:
            eager_ms = None
            for provider in sorted(args.providers, key=lambda p: p != "eager"):  # eager first: the ratio base
                try:
                    fn = make_case(shape, provider, mode, device, dtype)
                    ms, p20, p80, peak = time_gpu(fn) if cuda else time_cpu(fn, budget_s=0.3, max_reps=10)
                    del fn
                    _release(cuda, provider)
                except Skip as why:
                    skipped.setdefault((provider, str(why)), []).append(f"{shape_name}/{mode}")
                    continue
                except Exception as exc:  # record and carry on with the other cases
                    failed.append(f"{shape_name}/{mode}/{provider}: {type(exc).__name__}: {exc}")
                    continue
                if provider == "eager":
                    eager_ms = ms
                f = flops(shape, mode)
                b = bytes_moved(shape, mode, torch.finfo(dtype).bits // 8)
                tflops, gbps = f / ms / 1e9, b / ms / 1e6
                roof = ""
                if peaks is not None and mode.startswith("step"):
                    roof = f"{100 * max(f / peaks[0], b / peaks[1]) * 1e3 / ms:.0f}"
                ratio = f"{eager_ms / ms:.2f}" if eager_ms else ""
                mib = f"{peak:.0f}" if peak is not None else "n/a"
                print(
                    f"{shape_name:<18}{mode:<14}{provider:<16}{ms:>10.3f}{p20:>9.3f}{p80:>9.3f}"
                    f"{tflops:>9.2f}{gbps:>9.1f}{roof:>7}{mib:>9}{ratio:>9}"
                )
                rows.append(
                    dict(
                        timestamp=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                        **meta,
                        shape=shape_name if (cuda or args.full_size) else f"{shape_name}-small",
                        mode=mode,
                        provider=provider if provider != "compile" or COMPILE_MODE == "max-autotune" else f"compile:{COMPILE_MODE}",
                        dtype=str(dtype).replace("torch.", ""),
                        ms=f"{ms:.4f}",
                        tflops=f"{tflops:.3f}",
                        gbps=f"{gbps:.1f}",
                        peak_mem_mb="" if peak is None else f"{peak:.1f}",
                    )
                )
    if skipped:
        print("\nskipped:")
        for (provider, why), cases in skipped.items():
            where = "all shapes and modes asked for" if len(cases) == len(args.shapes) * len(args.modes) else ", ".join(cases)
            print(f"  {provider}: {why} [{where}]")
    if failed:
        print("\nFAILED (recorded, the other cases ran):")
        for line in failed:
            print(f"  {line}")
    if not cuda:
        print("\nThe GPU-only rows above were skipped because this machine has no CUDA GPU.")
    if rows and not args.no_csv:
        path = append_rows(rows, dev_name, args.csv, save=args.save)
        print(f"\nappended {len(rows)} rows to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
