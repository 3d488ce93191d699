"""Compile the Triton kernels ahead of time for sm_90 (H100/H200) without a GPU.

The interpreter runs kernels as numpy and accepts programs the GPU compiler rejects (loop-carried
type changes, bad dot shapes, layout conversions that run out of shared memory). This script
lowers every kernel through Triton's real NVIDIA pipeline (TTIR → TTGIR → LLVM → PTX → cubin with
the bundled ptxas) for the first autotune tiles and the interpreter's layout, and prints one line
per kernel. Run with TRITON_INTERPRET unset: ``python tests/aot_sm90.py``. Exit status 0 = all
compiled; 3 = this Triton build cannot target NVIDIA (nothing checked).

Each line also gives the compiled kernel's resources on sm_90 (``cuobjdump -res-usage`` of the cubin
that Triton's ptxas, ``ptxas-blackwell`` for sm_90+, produced): registers per thread, local memory
per thread (> 0 means ptxas spilled registers: Triton kernels use no local arrays), shared memory per
CTA (Triton's dynamic + the static part), and the occupancy that follows on an H100/H200 SM
(65,536 registers, 228 KB shared memory with 1 KB reserved per CTA, 2,048 threads, 32 CTAs;
132 SMs on an H100 SXM), with what limits it.

``--tiles`` compiles instead every tile the launchers can choose (the autotune configurations
after pruning, and the GRU launcher's blocks) at the benchmark widths, and prints one table;
``--fail-on-spill`` makes any spill exit with status 1. ``--jobs N`` compiles in N processes.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("run without TRITON_INTERPRET=1")

import triton  # noqa: E402

try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError:  # pragma: no cover
    sys.exit(3)

import slotvlm.kernels.gru as kgru  # noqa: E402
import slotvlm.kernels.layer_norm as kln  # noqa: E402
import slotvlm.kernels.slot_attention as ksa  # noqa: E402
import slotvlm.kernels.slot_attention_deferred as kfold  # noqa: E402
import slotvlm.kernels.slot_iterations as kiter  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
# sm_90 (H100/H200) per-SM limits for the occupancy column
SM90 = dict(regs=65536, smem=228 * 1024, smem_reserved_per_cta=1024, threads=2048, ctas=32, warps=64, sms=132,
            reg_unit=256)


def _have_ptxas() -> bool:
    import shutil

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return bundled.exists() or bool(os.environ.get("TRITON_PTXAS_PATH")) or shutil.which("ptxas") is not None
POINTERS = {"den": "fp32", "ws_acc": "fp32", "ws_den": "fp32", "ws_dq": "fp32", "mask": "u8", "cu_seqlens": "i32",
            "bias": "fp32", "dbias": "fp32", "ws_dbias": "fp32", "sd": "fp32", "g": "fp32", "ws_g": "fp32",
            "stats": "fp32", "part": "fp32", "save_s": "fp32", "save_u": "fp32", "save_den": "fp32", "ds0": "fp32",
            "sc_qk": "fp32", "sc_c": "fp32", "sc_da": "fp32", "sc_dd": "fp32"}
FLOATS = {"scale", "eps", "floor", "ln_eps_in", "ln_eps_s", "ln_eps_f"}


def compile_kernel(kernel, dtype: str, constexprs: dict, num_warps: int, num_stages: int = 2):
    jit = kernel.fn if hasattr(getattr(kernel, "fn", None), "arg_names") else kernel
    signature = {}
    for name in jit.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in FLOATS:
            signature[name] = "fp32"
        elif name in ("N", "N_PER_SPLIT", "M", "MAX_N", "ITERS", "N_TILES", "rows") or name.startswith("s_"):
            signature[name] = "i32"
        else:
            signature[name] = "*" + POINTERS.get(name, dtype)
    src = ASTSource(fn=jit, signature=signature, constexprs=constexprs)
    return triton.compile(src, target=TARGET, options={"num_warps": num_warps, "num_stages": num_stages})


def resources(compiled, num_warps: int) -> dict:
    """Registers, local (spill) bytes per thread, shared bytes per CTA and sm_90 occupancy of a
    compiled kernel, read from its cubin with the cuobjdump Triton bundles."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(compiled.asm["cubin"])
        fh.flush()
        text = subprocess.run([str(tool), "-res-usage", fh.name], capture_output=True, text=True, check=True).stdout
    usage = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", text))
    regs, local = int(usage.get("REG", 0)), int(usage.get("LOCAL", 0)) + int(usage.get("STACK", 0))
    smem = int(usage.get("SHARED", 0)) + int(getattr(compiled.metadata, "shared", 0) or 0)
    return dict(regs=regs, spill=local, smem=smem, **occupancy(regs, smem, num_warps))


def occupancy(regs: int, smem: int, num_warps: int) -> dict:
    """CTAs per SM on sm_90 and the fraction of the 64 warp slots they fill, with the limiter."""
    unit = SM90["reg_unit"]
    warp_regs = -(-max(regs, 1) * 32 // unit) * unit
    limits = {
        "registers": SM90["regs"] // (warp_regs * num_warps),
        "shared memory": SM90["smem"] // (smem + SM90["smem_reserved_per_cta"]),
        "threads": SM90["threads"] // (32 * num_warps),
        "CTA slots": SM90["ctas"],
    }
    ctas = min(limits.values())
    limiter = min(limits, key=limits.get)
    return dict(ctas=ctas, occupancy=ctas * num_warps / SM90["warps"], limiter=limiter)


def describe(res: dict) -> str:
    return (f"regs {res['regs']:>3}  spill {res['spill']:>4} B  smem {res['smem'] / 1024:>6.1f} KB  "
            f"{res['ctas']} CTA/SM  occupancy {100 * res['occupancy']:>4.1f}% ({res['limiter']})")


def kernel_args(kernel) -> list[str]:
    return (kernel.fn if hasattr(getattr(kernel, "fn", None), "arg_names") else kernel).arg_names


def slot_attn_constexprs(which, dtype, K, DH, tile, *, mask, varlen, attn, split, bias):
    bn, bdv, _ = tile
    c = dict(K=K, H=2, DH=DH, BLOCK_K=max(16, triton.next_power_of_2(K)), BLOCK_N=bn, BLOCK_DV=bdv,
             BLOCK_DK=min(bdv, 128), DOT_PREC="ieee" if dtype == "fp32" else "tf32",
             HAS_MASK=mask, IS_VARLEN=varlen, NORMALIZE=not split, HAS_BIAS=bias)
    c["STORE_ATTN" if which == "fwd" else "HAS_DATTN"] = attn
    for flag, name in (("HAS_MASK", "mask"), ("IS_VARLEN", "cu_seqlens"), ("STORE_ATTN", "attn"), ("HAS_DATTN", "dattn")):
        if flag in c and not c[flag]:
            c[name] = None
    if not bias:
        c.update(bias=None, dbias=None, ws_dbias=None)
    if which == "bwd":  # the bias cases are the projected form, where k and v are one tensor
        c["SHARED_KV"] = bias
        if bias:
            c["dv"] = None
    if not split:
        c.update(ws_acc=None, ws_den=None, ws_dq=None, ws_dbias=None)
    return c


def checked_cases() -> list:
    """The fixed set of flag combinations the kernel tests rely on (first/last autotune tiles)."""
    cases = []
    for which, kernel, tiles in (("fwd", ksa._slot_attn_fwd_kernel, ksa._FWD_TILES), ("bwd", ksa._slot_attn_bwd_kernel, ksa._BWD_TILES)):
        args = kernel.fn.arg_names
        for dtype, K, DH, tile, flags in (
            ("bf16", 8, 1024, tiles[0], dict(mask=False, varlen=False, attn=False, split=False, bias=True)),
            ("bf16", 7, 64, tiles[-1], dict(mask=True, varlen=False, attn=True, split=True, bias=True)),
            ("fp16", 8, 128, tiles[-1], dict(mask=False, varlen=True, attn=True, split=False, bias=False)),
            ("fp32", 7, 40, (16, 64, 4), dict(mask=True, varlen=False, attn=False, split=True, bias=False)),
        ):
            c = {k: v for k, v in slot_attn_constexprs(which, dtype, K, DH, tile, **flags).items() if k in args}
            cases.append((f"{kernel.fn.__name__} {dtype} K={K} DH={DH} tile={tile} {flags}", kernel, dtype, c, tile[2]))
    for kernel in (kgru._gru_gates_fwd_kernel, kgru._gru_gates_bwd_kernel):
        for dtype in ("bf16", "fp32"):
            cases.append((f"{kernel.__name__} {dtype}", kernel, dtype, dict(D=1024, BLOCK_M=16, BLOCK_D=256), 4))
    return [(label, kernel, dtype, c, warps, 2) for label, kernel, dtype, c, warps in cases]


# The benchmark problems whose selectable tiles --tiles compiles: (name, dtype, K, DH, flags) with the
# flags of SlotAttention's one-head projected path (bias = the folded key bias; split = the GPU's
# N-split, taken when P*H < #SMs, as at object-discovery).
TILE_SHAPES = [
    ("vlm", "bf16", 8, 1024, dict(mask=False, varlen=False, attn=False, split=False, bias=True)),
    ("vlm-varlen", "bf16", 8, 1024, dict(mask=False, varlen=True, attn=False, split=False, bias=True)),
    ("object-discovery", "bf16", 7, 64, dict(mask=False, varlen=False, attn=False, split=True, bias=True)),
]


def tile_cases() -> list:
    """Every tile the launchers can choose at :data:`TILE_SHAPES`: the slot-attention autotune
    configurations after the launcher's pruning, and the GRU launcher's blocks for D."""
    cases = []
    for name, dtype, K, DH, flags in TILE_SHAPES:
        for which, kernel in (("fwd", ksa._slot_attn_fwd_kernel), ("bwd", ksa._slot_attn_bwd_kernel)):
            args = kernel.fn.arg_names
            for cfg in ksa._prune(ksa._gpu_configs(which), {"DH": DH}):
                kw = cfg.kwargs
                tile = (kw["BLOCK_N"], kw["BLOCK_DV"], cfg.num_warps)
                c = {k: v for k, v in slot_attn_constexprs(which, dtype, K, DH, tile, **flags).items() if k in args}
                c["BLOCK_DK"] = kw["BLOCK_DK"]
                label = f"{kernel.fn.__name__:<22} {name:<17} {dtype} K={K} DH={DH:<5} N{kw['BLOCK_N']:>3} DV{kw['BLOCK_DV']:>5} DK{kw['BLOCK_DK']:>4} w{cfg.num_warps}"
                cases.append((label, kernel, dtype, c, cfg.num_warps, cfg.num_stages))
    cases += fold_tile_cases()
    for D in sorted({DH for _, _, _, DH, _ in TILE_SHAPES}):
        bm, bd = kgru._blocks(4096, D)
        for kernel in (kgru._gru_gates_fwd_kernel, kgru._gru_gates_bwd_kernel):
            label = f"{kernel.__name__:<22} D={D:<5} M{bm:>3} D{bd:>4} w4"
            cases.append((label, kernel, "bf16", dict(D=D, BLOCK_M=bm, BLOCK_D=bd), 4, 2))
    cases += layer_norm_tile_cases()
    cases += iteration_tile_cases()
    return cases


# The small-D problems of the whole-iteration kernel (kernels/slot_iterations.py): (name, K, D, hidden).
ITERATION_SHAPES = [("object-discovery", 7, 64, 128), ("video-objects", 11, 128, 256)]


def iteration_tile_cases() -> list:
    """The whole-iteration kernel at its launcher's GPU tile (64 tokens, 8 warps), bf16 inputs and
    weights, the gaussian init, no mask."""
    cases = []
    for name, K, D, hid in ITERATION_SHAPES:
        c = dict(K=K, D=D, HID=hid, ITERS=3, HAS_MASK=False, mask=None, INIT=1, BLOCK_K=max(16, triton.next_power_of_2(K)),
                 BLOCK_D=max(16, triton.next_power_of_2(D)), BLOCK_H=max(16, triton.next_power_of_2(hid)), BLOCK_N=64,
                 DOT_PREC="tf32")
        label = f"{kiter._slot_iterations_fwd.fn.__name__:<22} {name:<17} bf16 K={K} D={D:<5} H{hid:>4} N 64 w8"
        cases.append((label, kiter._slot_iterations_fwd, "bf16", dict(c, SAVE=True), 8, 2))
        # its backward (kernels/slot_iterations_bwd.py): the full unrolled gradient, gaussian init, dx
        from slotvlm.kernels import slot_iterations_bwd as kbwd  # noqa: PLC0415

        b = {k: v for k, v in c.items() if k != "INIT"}
        b.update(NBWD=3, INIT_GRAD=kbwd.GRAD_GAUSSIAN, NEED_DX=True, P_ROW=kbwd.row_layout(D, hid, K, kbwd.GRAD_GAUSSIAN)["_total"])
        label = f"{kbwd._slot_iterations_bwd.fn.__name__:<22} {name:<17} bf16 K={K} D={D:<5} H{hid:>4} N 64 w8"
        cases.append((label, kbwd._slot_iterations_bwd, "bf16", b, 8, 2))
    return cases


def layer_norm_tile_cases() -> list:
    """The folded path's input LayerNorm (kernels/layer_norm.py) at its launcher's GPU tile for each
    benchmark width, fp32 tensors (autocast's fp32 inputs: the widest registers)."""
    import torch  # noqa: PLC0415

    cases = []
    for D in sorted({DH for _, _, _, DH, _ in TILE_SHAPES}):
        br, bd, warps = kln._tiles(D, torch.device("cuda"))
        for kernel, flags in ((kln._layer_norm_fwd_kernel, dict(HAS_W=True, HAS_B=True)),
                              (kln._layer_norm_bwd_kernel, dict(HAS_W=True, HAS_PART=True))):
            label = f"{kernel.fn.__name__:<22} D={D:<5} R{br:>3} D{bd:>5} w{warps}"
            cases.append((label, kernel, "fp32", dict(D=D, BLOCK_R=br, BLOCK_D=bd, **flags), warps, 2))
    return cases


def fold_tile_cases() -> list:
    """The folded one-head kernels (kernels/slot_attention_deferred.py) at the GPU tile their
    launchers choose (``_tiles``), with SlotAttention's flags (folded key bias, no stored attention;
    N split — no normalisation in the forward — where TILE_SHAPES says so)."""
    import torch  # noqa: PLC0415

    cases = []
    for name, dtype, K, D, flags in TILE_SHAPES:
        varlen = flags["varlen"]
        per_kernel = (
            ("fwd", kfold._fold_fwd_kernel, dict(HAS_BIAS=True, STORE_ATTN=False, attn=None, NORMALIZE=not flags["split"])),
            ("scores", kfold._fold_scores_bwd_kernel, dict(HAS_BIAS=True)),
            ("dq", kfold._fold_dq_bwd_kernel, dict(HAS_DATTN=False, dattn=None)),
            ("dx", kfold._fold_dx_kernel, {}),
        )
        for which, kernel, extra in per_kernel:
            bn, bd, warps, stages = kfold._tiles(D, torch.device("cuda"), which)
            common = dict(K=K, D=D, BLOCK_K=kfold._block_k(K), BLOCK_N=bn, BLOCK_D=bd, DOT_PREC="tf32",
                          HAS_MASK=False, mask=None, IS_VARLEN=varlen)
            if not varlen:
                common["cu_seqlens"] = None
            args = kernel.fn.arg_names
            c = {k: v for k, v in dict(common, **extra).items() if k in args}
            label = f"{kernel.fn.__name__:<22} {name:<17} {dtype} K={K} D={D:<5} N{bn:>3} D{bd:>5} w{warps} s{stages}"
            cases.append((label, kernel, dtype, c, warps, stages))
    return cases


def _compile_index(tiles: bool, index: int):
    """Compile case ``index`` (by number: kernels do not pickle into worker processes)."""
    return _compile_case((tile_cases() if tiles else checked_cases())[index])


def _compile_case(case):
    label, kernel, dtype, constexprs, warps, stages = case
    flags = {n for n in kernel_args(kernel) if n.isupper() and n.startswith(("HAS_", "IS_", "STORE_", "NORMALIZE"))}
    missing = flags - set(constexprs)
    if missing:
        raise SystemExit(f"{label}: flags without a value: {sorted(missing)}")
    return label, resources(compile_kernel(kernel, dtype, constexprs, warps, stages), warps)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiles", action="store_true", help="compile every selectable tile at the benchmark widths")
    p.add_argument("--fail-on-spill", action="store_true", help="exit 1 if any compiled kernel spills registers")
    p.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
    args = p.parse_args(argv)
    if not _have_ptxas():
        print("no ptxas (Triton's NVIDIA backend is not bundled here); nothing checked")
        return 3
    cases = tile_cases() if args.tiles else checked_cases()
    if args.tiles:
        print(f"sm_90 resources of every selectable tile ({len(cases)} kernels; {SM90['sms']} SMs, "
              f"{SM90['regs']} regs and {SM90['smem'] // 1024} KB smem per SM)")
    spills = []
    if args.jobs > 1:
        import functools

        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(functools.partial(_compile_index, args.tiles), range(len(cases))))
    else:
        results = map(_compile_case, cases)
    for label, res in results:
        print("compiled", label, "|", describe(res), flush=True)
        if res["spill"]:
            spills.append(label)
    if spills:
        print(f"\n{len(spills)} kernel(s) spill registers:\n  " + "\n  ".join(spills))
        if args.fail_on_spill:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
