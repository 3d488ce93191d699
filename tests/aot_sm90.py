"""Compile the Triton kernels ahead of time for sm_90 (H100/H200) without a GPU.

The interpreter runs kernels as numpy and accepts programs the GPU compiler rejects (loop-carried
type changes, bad dot shapes, layout conversions that run out of shared memory). This script
lowers every kernel through Triton's real NVIDIA pipeline (TTIR → TTGIR → LLVM → PTX → cubin with
the bundled ptxas) for the first autotune tiles and the interpreter's layout, and prints one line
per kernel. Run with TRITON_INTERPRET unset: ``python tests/aot_sm90.py``. Exit status 0 = all
compiled; 3 = this Triton build cannot target NVIDIA (nothing checked).
"""
from __future__ import annotations

import os
import sys
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

import kernels.gru as kgru  # noqa: E402
import kernels.slot_attention as ksa  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)


def _have_ptxas() -> bool:
    import shutil

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return bundled.exists() or bool(os.environ.get("TRITON_PTXAS_PATH")) or shutil.which("ptxas") is not None
POINTERS = {"den": "fp32", "ws_acc": "fp32", "ws_den": "fp32", "ws_dq": "fp32", "mask": "u8", "cu_seqlens": "i32",
            "bias": "fp32", "dbias": "fp32", "ws_dbias": "fp32"}
FLOATS = {"scale", "eps", "floor"}


def compile_kernel(kernel, dtype: str, constexprs: dict, num_warps: int) -> None:
    jit = kernel.fn if hasattr(getattr(kernel, "fn", None), "arg_names") else kernel
    signature = {}
    for name in jit.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in FLOATS:
            signature[name] = "fp32"
        elif name in ("N", "N_PER_SPLIT", "M") or name.startswith("s_"):
            signature[name] = "i32"
        else:
            signature[name] = "*" + POINTERS.get(name, dtype)
    src = ASTSource(fn=jit, signature=signature, constexprs=constexprs)
    triton.compile(src, target=TARGET, options={"num_warps": num_warps, "num_stages": 2})


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


def main() -> int:
    if not _have_ptxas():
        print("no ptxas (Triton's NVIDIA backend is not bundled here); nothing checked")
        return 3
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
    for label, kernel, dtype, constexprs, warps in cases:
        flags = {n for n in kernel_args(kernel) if n.isupper() and n.startswith(("HAS_", "IS_", "STORE_", "NORMALIZE"))}
        missing = flags - set(constexprs)
        if missing:
            raise SystemExit(f"{label}: flags without a value: {sorted(missing)}")
        compile_kernel(kernel, dtype, constexprs, warps)
        print("compiled", label, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
