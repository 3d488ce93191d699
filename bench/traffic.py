#!/usr/bin/env python
"""Count kernel launches, HBM bytes and FLOPs of one slot-attention module call without a GPU, and
turn them into a roofline-model time for H100 and H200. A MODEL, not a measurement.

How it counts (full benchmark sizes, no memory allocated, nothing executed):
  * Inputs and parameters are ``FakeTensor``s (``torch._subclasses.FakeTensorMode``): shapes,
    dtypes and strides are real, data is absent.
  * A ``TorchDispatchMode`` sees every aten op below autograd (forward and backward). A view
    (``view``, ``t``, ``expand``, ``detach``, ...) and an allocation (``empty*``) are free; every
    other aten op is one kernel launch that reads each tensor input once and writes each output
    once (a broadcast/expanded input counts its distinct elements), FLOPs = ``2·m·n·k`` for the
    GEMMs (``mm``, ``addmm``, ``bmm``, ``baddbmm``, ``mv``, ``addmv``, ``dot``) and 0 for the
    rest (they are bandwidth-bound).
  * ``slotvlm::*`` custom ops: their fake implementation would hide the kernels, so the dispatch
    mode catches the custom op *below autograd* and calls the op's real Python implementation
    (``torch._library.custom_ops.OPDEFS[name]._init_fn``) on the fake tensors, with the mode
    re-entered so the aten ops inside are counted too. Autograd still goes through the op's
    registered backward.
  * Triton kernels: ``JITFunction.run`` / ``InterpretedFunction.run`` (what ``kernel[grid](...)``
    ends in, through ``@triton.heuristics``) are replaced while counting by a recorder that notes
    the kernel, its grid and its arguments and returns without running anything. Bytes and FLOPs
    of a launch come from, in order: the kernel module's ``TRAFFIC[kernel_name](grid, args)``
    (``-> (bytes_read, bytes_written, flops)``); a formula in this file for today's slot-attention
    kernels (used only while the kernel's argument list is exactly the one it was written for);
    otherwise the DEFAULT: each tensor the kernel loads from is read once, each tensor it stores
    to is written once (found from the kernel's source: the base pointer of every ``tl.load`` /
    ``tl.store``), FLOPs 0 — exact for kernels without ``tl.dot``, an undercount otherwise (the
    table's footnote names such kernels).
  * Launch paths are the CPU ones (``TRITON_INTERPRET=1``: the launcher's single interpreter tile,
    no N-split); on a GPU the autotuner may pick other tiles, and for P·H < #SMs the launcher
    splits N (a few extra small reductions at object-discovery).
  * torch.compile cannot be counted here: Inductor generates CPU C++ for CPU tensors and needs a
    CUDA device to generate its Triton kernels, so its launches and bytes on a GPU are not knowable
    on this machine (the output says so).

The time model (constants in :data:`MODEL` and printed with every run), per kernel:
``max(bytes / (HBM · efficiency), FLOPs / rate) + minimum kernel time``, summed over the kernels
(device time); host time = issue cost per aten op + per custom-op call + per bare Triton launch;
modelled time = max(device, host) (the host issues asynchronously, so the slower side wins).

Writes one CSV row per (shape, mode, dtype, provider, device model) to ``traffic-model.csv``
(in ``bench/results/`` with ``--save``, otherwise ``$SLOTVLM_BENCH_DIR`` or
``<temp>/slotvlm-bench``), columns as the other benchmarks' (``device`` names the modelled GPU
with "(model)", ``ms`` is the modelled time) plus launches, custom_ops, gbytes, gflop,
ms_device, ms_host, x_eager and ``model``.

    python bench/traffic.py                                  # everything (a few minutes on 2 CPUs)
    python bench/traffic.py --shapes vlm-slow --modes fwd+bwd --providers slotvlm eager
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # the CPU launch path; must precede `import triton`

import argparse  # noqa: E402
import ast  # noqa: E402
import contextlib  # noqa: E402
import datetime as _dt  # noqa: E402
import functools  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from _common import add_output_args, append_rows, commit, triton_run_replaced, triton_version  # noqa: E402

# ------------------------------------------------------------------------ the model's constants
#: Everything the time model assumes, in one place (printed with every run).
MODEL = {
    "name": "roofline-v1",
    "hbm_efficiency": 0.70,  # fraction of the HBM peak a streaming kernel reaches
    "gemm_bf16_flops": 600e12,  # cuBLAS dense bf16/fp16 GEMM, reachable (H100 peak ~990e12)
    "triton_dot_bf16_flops": 300e12,  # small Triton tl.dot tiles (mma.sync, K padded), reachable
    "fp32_flops": 50e12,  # fp32 GEMM / ieee tl.dot without tensor cores (peak ~67e12)
    "min_kernel_us": 2.5,  # added to every kernel (launch latency, tail, ramp-up)
    "host_aten_op_us": 7.5,  # host issue cost of one eager aten op (5-10)
    "host_custom_op_us": 50.0,  # one Triton custom-op call: dispatch, guard, launch (35-70)
    "host_triton_launch_us": 20.0,  # a Triton launch issued outside a custom op (this file's assumption)
}
#: HBM peak bandwidth (bytes/s) of the modelled GPUs (dense bf16 peak ~990 TFLOP/s on both).
DEVICES = {"H100": 3.35e12, "H200": 4.8e12}

BUDGETS = ROOT / "bench" / "budgets.json"

# ------------------------------------------------------------------------------ aten op model
_FREE = {  # no kernel: views, aliases, metadata, allocations
    "aten::detach", "aten::alias", "aten::_unsafe_view", "aten::lift_fresh", "aten::empty", "aten::empty_like",
    "aten::empty_strided", "aten::new_empty", "aten::new_empty_strided", "aten::_reshape_alias",
    "aten::set_", "aten::resize_", "prim::device", "aten::sym_size", "aten::sym_stride", "aten::sym_numel",
    "aten::is_same_size", "aten::_has_compatible_shallow_copy_type",
}
_WRITE_ONLY = {  # ops that overwrite their first argument without reading it
    "aten::copy_", "aten::fill_", "aten::zero_", "aten::normal_", "aten::uniform_", "aten::random_",
}


def _unique_elements(t: torch.Tensor) -> int:
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of the distinct elements a view addresses (a broadcast dimension counts once)."""
    return _unique_elements(t) * t.element_size()


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def gemm_flops(name: str, args) -> int:
    """2·m·n·k of a matrix product aten op (0 for any other op)."""
    def s(i):
        return list(args[i].shape)

    if name in ("aten::mm",):
        (m, k), (_, n) = s(0), s(1)
        return 2 * m * n * k
    if name in ("aten::addmm", "aten::_addmm_activation"):
        (m, k), (_, n) = s(1), s(2)
        return 2 * m * n * k
    if name == "aten::bmm":
        (b, m, k), (_, _, n) = s(0), s(1)
        return 2 * b * m * n * k
    if name == "aten::baddbmm":
        (b, m, k), (_, _, n) = s(1), s(2)
        return 2 * b * m * n * k
    if name == "aten::mv":
        m, k = s(0)
        return 2 * m * k
    if name == "aten::addmv":
        m, k = s(1)
        return 2 * m * k
    if name == "aten::dot":
        return 2 * s(0)[0]
    return 0


@dataclass
class Launch:
    """One kernel (aten op or Triton launch) and its modelled traffic."""

    kind: str  # "aten" or "triton"
    name: str
    bytes_read: int
    bytes_written: int
    flops: int
    rate: float  # FLOP/s this kernel's FLOPs run at
    in_custom_op: bool
    source: str = ""  # how a Triton kernel's traffic was obtained

    def device_s(self, hbm: float) -> float:
        t_mem = (self.bytes_read + self.bytes_written) / (hbm * MODEL["hbm_efficiency"])
        t_math = self.flops / self.rate if self.flops else 0.0
        return max(t_mem, t_math) + MODEL["min_kernel_us"] * 1e-6


@dataclass
class Count:
    launches: list[Launch] = field(default_factory=list)
    custom_ops: int = 0

    @property
    def n(self) -> int:
        return len(self.launches)

    @property
    def bytes(self) -> int:
        return sum(x.bytes_read + x.bytes_written for x in self.launches)

    @property
    def flops(self) -> int:
        return sum(x.flops for x in self.launches)

    def host_s(self) -> float:
        us = MODEL["host_custom_op_us"] * self.custom_ops
        for x in self.launches:
            if x.kind == "aten":
                us += MODEL["host_aten_op_us"]
            elif not x.in_custom_op:
                us += MODEL["host_triton_launch_us"]
        return us * 1e-6

    def device_s(self, hbm: float) -> float:
        return sum(x.device_s(hbm) for x in self.launches)

    def model_ms(self, hbm: float) -> float:
        return 1e3 * max(self.device_s(hbm), self.host_s())


def _gemm_rate(dtype: torch.dtype, triton: bool = False) -> float:
    if dtype in (torch.bfloat16, torch.float16):
        return MODEL["triton_dot_bf16_flops" if triton else "gemm_bf16_flops"]
    return MODEL["fp32_flops"]


class CountingMode(TorchDispatchMode):
    """Counts aten kernels (see the module docstring) into :attr:`count`; runs ``slotvlm::``
    custom ops through their real Python implementation so their Triton launches are seen."""

    def __init__(self, namespace: str = "slotvlm"):
        super().__init__()
        self.count = Count()
        self.namespace = namespace
        self._custom_depth = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        real = _custom_op_impl(name) if name.startswith(self.namespace + "::") else None
        if real is not None:
            self.count.custom_ops += 1
            self._custom_depth += 1
            try:
                with self:  # count what the implementation does (this mode is popped while we run)
                    return real(*args, **kwargs)
            finally:
                self._custom_depth -= 1
        out = func(*args, **kwargs)
        if name in _FREE or func.is_view:
            return out
        if name.startswith("aten::") and name.split("::")[1] in ("size", "stride", "numel", "dim", "is_contiguous"):
            return out
        outs = list(_tensors(out))
        if not outs:  # e.g. _local_scalar_dense, item, equal: a host read, no tensor kernel modelled
            return out
        ins, seen = [], set()
        skip_first = name in _WRITE_ONLY
        for i, t in enumerate(_tensors((args, kwargs))):
            if (i == 0 and skip_first) or id(t) in seen:
                continue
            seen.add(id(t))
            ins.append(t)
        out_ids = {id(t) for t in outs}
        read = sum(tensor_bytes(t) for t in ins if id(t) not in out_ids or name not in _WRITE_ONLY)
        written = sum(tensor_bytes(t) for t in {id(t): t for t in outs}.values())
        flops = gemm_flops(name, args)
        self.count.launches.append(
            Launch("aten", name, read, written, flops, _gemm_rate(outs[0].dtype), self._custom_depth > 0)
        )
        return out


def _custom_op_impl(qualname: str):
    """The real Python function behind a ``torch.library.custom_op`` (None for other ops)."""
    from torch._library.custom_ops import OPDEFS

    opdef = OPDEFS.get(qualname)
    return getattr(opdef, "_init_fn", None) if opdef is not None else None


# ---------------------------------------------------------------------------- Triton launches
_RECORDING: list[CountingMode] = []


def _jit_signature(jit) -> list[str]:
    names = getattr(jit, "arg_names", None)
    return list(names) if names else list(inspect.signature(jit.fn).parameters)


def _recording_run(self, *args, grid=None, warmup=False, **kwargs):
    """Stands in for ``JITFunction.run`` while counting: record the launch, run nothing."""
    if not _RECORDING:
        raise RuntimeError("traffic.py's Triton recorder was called outside a counting region")
    mode = _RECORDING[-1]
    names = _jit_signature(self)
    bound = dict(zip(names, args))
    bound.update(kwargs)
    g = grid(bound) if callable(grid) else grid
    g = tuple(int(x) for x in (g if isinstance(g, (tuple, list)) else (g,)))
    g = g + (1,) * (3 - len(g))
    read, written, flops, source = triton_traffic(self, g, bound)
    floats = [t for t in _tensors(bound) if t.is_floating_point()]
    rate = _gemm_rate(floats[0].dtype if floats else torch.float32, triton=True)
    mode.count.launches.append(
        Launch("triton", self.fn.__name__, read, written, flops, rate, mode._custom_depth > 0, source)
    )


@contextlib.contextmanager
def recording_triton(mode: CountingMode):
    """Replace the Triton launch entry points by the recorder for the duration."""
    _RECORDING.append(mode)
    try:
        with triton_run_replaced(_recording_run):
            yield
    finally:
        _RECORDING.pop()


def triton_traffic(jit, grid, args) -> tuple[int, int, int, str]:
    """``(bytes_read, bytes_written, flops, source)`` of one Triton launch (see the docstring)."""
    name = jit.fn.__name__
    table = getattr(sys.modules.get(jit.fn.__module__), "TRAFFIC", None) or {}
    if name in table:
        r, w, f = table[name](grid, args)
        return int(r), int(w), int(f), "kernel TRAFFIC"
    legacy = LEGACY_TRAFFIC.get(name)
    if legacy is not None and tuple(_jit_signature(jit)) == legacy[0]:
        r, w, f = legacy[1](grid, args)
        return int(r), int(w), int(f), "traffic.py formula"
    r, w = default_bytes(jit, args)
    has_dot = _kernel_access(jit.fn)[2]
    return r, w, 0, "default (FLOPs unknown: has tl.dot)" if has_dot else "default"


def default_bytes(jit, args) -> tuple[int, int]:
    """Each tensor argument the kernel loads from read once, each it stores to written once."""
    loaded, stored, _ = _kernel_access(jit.fn)
    read = written = 0
    for name, t in args.items():
        if not isinstance(t, torch.Tensor):
            continue
        if name in stored:
            written += tensor_bytes(t)
        if name in loaded or name not in stored and not (loaded or stored):
            read += tensor_bytes(t)
    return read, written


_NOT_POINTERS = {"load", "arange", "zeros", "full", "program_id", "num_programs", "cdiv", "sum", "max", "min",
                 "maximum", "minimum", "exp", "where", "dot", "trans", "sigmoid", "abs", "sqrt", "rsqrt"}


@functools.lru_cache(maxsize=None)
def _kernel_access(fn) -> tuple[frozenset, frozenset, bool]:
    """(parameters loaded from, parameters stored to, uses tl.dot) of a @triton.jit function,
    following pointers through assignments and into @triton.jit helpers."""
    loaded, stored, dot = _analyse(fn, depth=0)
    return frozenset(loaded), frozenset(stored), dot


def _analyse(fn, depth):
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return set(), set(), False
    fdef = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))
    params = [a.arg for a in fdef.args.args]
    assigns: dict[str, list] = {}
    for node in ast.walk(fdef):
        if isinstance(node, ast.Assign):
            for tgt in node.targets:
                _bind(tgt, node.value, assigns)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)) and node.value is not None:
            _bind(node.target, node.value, assigns)
    glb = getattr(fn, "__globals__", {})

    def helper(call):
        f = call.func
        obj = glb.get(f.id) if isinstance(f, ast.Name) else None
        inner = getattr(obj, "fn", None)
        return inner if inner is not None and depth < 6 else None

    def bases(expr, seen=frozenset()):
        """Parameters a pointer expression is based on."""
        if isinstance(expr, ast.Name):
            if expr.id in params and expr.id not in assigns:
                return {expr.id}
            if expr.id in seen:
                return set()
            out = set()
            for value, idx in assigns.get(expr.id, []):
                out |= bases_of_value(value, idx, seen | {expr.id})
            return out
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, (ast.Add, ast.Sub)):
            return bases(expr.left, seen) | bases(expr.right, seen)
        if isinstance(expr, ast.IfExp):
            return bases(expr.body, seen) | bases(expr.orelse, seen)
        if isinstance(expr, ast.Subscript):
            return bases(expr.value, seen)
        if isinstance(expr, ast.Call):
            f = expr.func
            if isinstance(f, ast.Attribute) and f.attr in ("to", "cast"):
                return bases(f.value, seen)
            if isinstance(f, ast.Attribute) and f.attr in ("make_block_ptr", "make_tensor_descriptor", "advance"):
                first = expr.args[0] if expr.args else next((k.value for k in expr.keywords if k.arg == "base"), None)
                return bases(first, seen) if first is not None else set()
            inner = helper(expr)
            if inner is not None:
                return _helper_return_bases(inner, expr, None, bases, seen)
        return set()

    def bases_of_value(value, idx, seen):
        if idx is None:
            return bases(value, seen)
        if isinstance(value, (ast.Tuple, ast.List)) and idx < len(value.elts):
            return bases(value.elts[idx], seen)
        if isinstance(value, ast.Call) and helper(value) is not None:
            return _helper_return_bases(helper(value), value, idx, bases, seen)
        return set()

    loaded, stored, dot = set(), set(), False
    for node in ast.walk(fdef):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        attr = f.attr if isinstance(f, ast.Attribute) else None
        if attr == "dot":
            dot = True
        if attr == "load" and node.args:
            loaded |= bases(node.args[0])
        elif (attr == "store" or (attr or "").startswith("atomic_")) and node.args:
            stored |= bases(node.args[0])
        else:
            inner = helper(node)
            if inner is not None:
                h_loaded, h_stored, h_dot = _analyse(inner, depth + 1)
                dot |= h_dot
                h_params = list(inspect.signature(inner).parameters)
                actual = _actual_args(node, h_params)
                for p in h_loaded:
                    if p in actual:
                        loaded |= bases(actual[p])
                for p in h_stored:
                    if p in actual:
                        stored |= bases(actual[p])
    return loaded & set(params), stored & set(params), dot


def _actual_args(call, params):
    actual = dict(zip(params, call.args))
    actual.update({k.arg: k.value for k in call.keywords if k.arg})
    return actual


def _helper_return_bases(inner, call, idx, caller_bases, seen):
    """Bases (in the caller's parameters) of a helper's return value (element idx of a tuple)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(inner)))
    except (OSError, TypeError, SyntaxError):
        return set()
    fdef = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))
    h_params = [a.arg for a in fdef.args.args]
    actual = _actual_args(call, h_params)
    out = set()
    for ret in (n.value for n in ast.walk(fdef) if isinstance(n, ast.Return) and n.value is not None):
        expr = ret.elts[idx] if idx is not None and isinstance(ret, ast.Tuple) and idx < len(ret.elts) else ret
        for name in _names_at_base(expr):
            if name in actual:
                out |= caller_bases(actual[name], seen)
    return out


def _names_at_base(expr) -> set[str]:
    """Names at the base of a pointer expression inside a helper (``a + off`` -> {a, off})."""
    if isinstance(expr, ast.Name):
        return {expr.id}
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, (ast.Add, ast.Sub)):
        return _names_at_base(expr.left) | _names_at_base(expr.right)
    return set()


def _bind(target, value, assigns):
    if isinstance(target, ast.Name):
        assigns.setdefault(target.id, []).append((value, None))
    elif isinstance(target, (ast.Tuple, ast.List)):
        for i, elt in enumerate(target.elts):
            if isinstance(elt, ast.Name):
                assigns.setdefault(elt.id, []).append((value, i))


# ------------------------------------------------- formulas for today's slot-attention kernels
def _sa_tokens(args) -> tuple[int, int]:
    """(P·H, token positions per problem·head rounded up to BLOCK_N, summed over problems)."""
    q, k = args["q"], args["k"]
    P, _, H, _ = q.shape
    bn = int(args["BLOCK_N"])
    if args.get("cu_seqlens") is None:
        n = k.shape[1]
        return P * H, P * H * (-(-n // bn) * bn)
    T = k.shape[0]  # packed: lengths unknown under fake tensors; average length, half a tile lost each
    return P * H, H * (T + P * bn // 2)


def _sa_fwd(grid, args):
    """Today's forward: per token tile, logits over the whole head (recomputed by every D-chunk
    program) and attn·v over the program's D-chunk; re-reads by the D-chunks hit L2 (bytes once)."""
    r, w = _sa_default(args, fwd=True)
    DH, bk, bdv = int(args["DH"]), int(args["BLOCK_K"]), int(args["BLOCK_DV"])
    num_d = -(-DH // bdv)
    _, tokens = _sa_tokens(args)
    dh_pad = -(-DH // int(args["BLOCK_DK"])) * int(args["BLOCK_DK"])
    flops = 2 * bk * tokens * (num_d * dh_pad + num_d * bdv)
    return r, w, flops


def _sa_bwd(grid, args):
    """Today's backward: per token tile and D-chunk, logits and dW over the whole head, then dk, dv,
    dq over the chunk (BLOCK_K rows, padded to 16)."""
    r, w = _sa_default(args, fwd=False)
    DH, bk, bdv = int(args["DH"]), int(args["BLOCK_K"]), int(args["BLOCK_DV"])
    num_d = -(-DH // bdv)
    _, tokens = _sa_tokens(args)
    dh_pad = -(-DH // int(args["BLOCK_DK"])) * int(args["BLOCK_DK"])
    flops = 2 * bk * tokens * num_d * (2 * dh_pad + 3 * bdv)
    return r, w, flops


def _sa_default(args, fwd):
    from slotvlm.kernels import slot_attention as ksa

    kernel = ksa._slot_attn_fwd_kernel if fwd else ksa._slot_attn_bwd_kernel
    jit = kernel.fn if hasattr(kernel, "fn") else kernel
    return default_bytes(jit, args)


_SA_FWD_ARGS = (
    "q", "k", "v", "mask", "cu_seqlens", "bias", "out", "den", "ws_acc", "ws_den", "attn", "scale", "eps", "floor",
    "N", "N_PER_SPLIT", "s_qp", "s_qk", "s_qh", "s_kp", "s_kn", "s_kh", "s_vp", "s_vn", "s_vh", "s_mp",
    "s_op", "s_ok", "s_oh", "s_ap", "s_ah", "s_ak", "K", "H", "DH", "BLOCK_K", "BLOCK_N", "BLOCK_DK", "BLOCK_DV",
    "DOT_PREC", "HAS_MASK", "IS_VARLEN", "STORE_ATTN", "NORMALIZE", "HAS_BIAS",
)
_SA_BWD_ARGS = (
    "q", "k", "v", "mask", "cu_seqlens", "bias", "out", "dout", "den", "dattn", "dq", "dk", "dv", "ws_dq", "dbias",
    "ws_dbias", "scale", "eps", "floor", "N", "N_PER_SPLIT", "s_qp", "s_qk", "s_qh", "s_kp", "s_kn", "s_kh",
    "s_vp", "s_vn", "s_vh", "s_mp", "s_op", "s_ok", "s_oh", "s_ap", "s_ah", "s_ak", "K", "H", "DH", "BLOCK_K",
    "BLOCK_N", "BLOCK_DK", "BLOCK_DV", "DOT_PREC", "HAS_MASK", "IS_VARLEN", "HAS_DATTN", "NORMALIZE", "HAS_BIAS",
    "SHARED_KV",
)
#: kernel name -> (the exact argument list the formula was written for, formula). A kernel whose
#: module defines TRAFFIC, or whose arguments changed, does not use these.
LEGACY_TRAFFIC = {
    "_slot_attn_fwd_kernel": (_SA_FWD_ARGS, _sa_fwd),
    "_slot_attn_bwd_kernel": (_SA_BWD_ARGS, _sa_bwd),
}


# ------------------------------------------------------------------------------------ cases
def _bench():
    import slot_attn

    return slot_attn


MODES = ("fwd", "fwd+bwd", "step-fwd", "step-fwd+bwd")
PROVIDERS = ("slotvlm", "eager", "slot-attention", "compile")
DTYPES = ("bf16", "autocast")  # bf16 parameters and inputs; fp32 ones under bf16 autocast


class Skip(Exception):
    """A case this counter does not model (the message says why)."""


def _fake_module(shape, provider, dtype, fake_mode):
    sa = _bench()
    backend = "triton" if provider == "slotvlm" else "torch"
    model = sa._module(shape, backend, "cpu", dtype)
    if provider == "slot-attention":
        try:
            from slot_attention import SlotAttention as Peer
        except ImportError as exc:
            raise Skip("the slot-attention package is not installed") from exc
        peer = Peer(shape.K, shape.D, iters=sa.ITERS, hidden_dim=shape.hidden).to(dtype)
        peer.load_state_dict(model.state_dict(), strict=True)
        model = peer
    for mod in model.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None:
                mod._parameters[name] = torch.nn.Parameter(fake_mode.from_tensor(p), requires_grad=p.requires_grad)
    return model


def count_case(shape, provider: str, mode: str, dtype: str = "bf16") -> Count:
    """Launches, bytes and FLOPs of one call of ``bench/slot_attn.py``'s (shape, provider, mode)
    at the given size, on fake tensors. ``dtype``: "bf16" or "autocast" (fp32 under bf16 autocast)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    if provider == "compile":
        raise Skip(
            "torch.compile is not counted: Inductor emits C++ for CPU tensors and needs a CUDA device to "
            "generate the Triton kernels a GPU would run (measure it with bench/slot_attn.py on a GPU)"
        )
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if mode.startswith("step") and dtype == "autocast":
        raise Skip("the attention step alone takes tensors of one dtype; autocast does not apply")
    if mode.startswith("step") and provider == "slot-attention":
        raise Skip("the slot-attention package has no separate attention step")
    if shape.varlen and provider == "slot-attention":
        raise Skip("the slot-attention package has no padding mask, so no variable-length input")
    pdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    lengths = shape.lengths()
    mask = (torch.arange(shape.N)[None, :] < torch.tensor(lengths)[:, None]) if shape.varlen else None
    cu = torch.zeros(shape.P + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    fake = FakeTensorMode(allow_non_fake_inputs=True)  # mask and cu_seqlens stay real (host reads)
    model = None if mode.startswith("step") else _fake_module(shape, provider, pdtype, fake)
    grad_mode = torch.no_grad() if mode in ("fwd", "step-fwd") else contextlib.nullcontext()
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "autocast" else contextlib.nullcontext()
    counter = CountingMode()
    with fake:
        call, leaves = _make_call(shape, provider, mode, model, pdtype, mask, cu, lengths)
        with recording_triton(counter), amp, grad_mode:
            with counter:
                out = call()
            if mode.endswith("bwd"):
                grad = torch.ones_like(out)  # the upstream gradient is not the module's work
                with counter:
                    out.backward(grad)
    del leaves
    return counter.count


def _make_call(shape, provider, mode, model, dtype, mask, cu, lengths):
    P, N, D, K = shape.P, shape.N, shape.D, shape.K
    needs_grad = mode.endswith("bwd")
    if mode.startswith("step"):
        from slotvlm.ops.slot_attention_ref import slot_attention_step_ref

        q = torch.randn(P, K, 1, D, dtype=dtype, requires_grad=needs_grad)
        scale = D**-0.5
        if provider == "slotvlm" and shape.varlen:
            from slotvlm.ops import fused

            T = sum(lengths)
            k = torch.randn(T, 1, D, dtype=dtype, requires_grad=needs_grad)
            v = torch.randn(T, 1, D, dtype=dtype, requires_grad=needs_grad)
            return (lambda: fused.slot_attention_step_varlen(q, k, v, cu, max(lengths), scale=scale)[0]), (q, k, v)
        k = torch.randn(P, N, 1, D, dtype=dtype, requires_grad=needs_grad)
        v = torch.randn(P, N, 1, D, dtype=dtype, requires_grad=needs_grad)
        if provider == "slotvlm":
            from slotvlm.ops import fused

            return (lambda: fused.slot_attention_step(q, k, v, mask, scale=scale)[0]), (q, k, v)
        return (lambda: slot_attention_step_ref(q, k, v, mask, scale=scale)[0]), (q, k, v)
    if provider == "slotvlm" and shape.varlen:
        x = torch.randn(sum(lengths), D, dtype=dtype, requires_grad=needs_grad)
        return (lambda: model.forward_varlen(x, cu, max_seqlen=max(lengths))), (x,)
    x = torch.randn(P, N, D, dtype=dtype, requires_grad=needs_grad)
    if provider == "slot-attention":
        return (lambda: model(x)), (x,)
    return (lambda: model(x, mask=mask)), (x,)


# ------------------------------------------------------------------------------------ budgets
def load_budgets(path: Path = BUDGETS) -> dict:
    """``{"launches": {"shape/mode/dtype": max}, "gbytes": {...}}`` for provider slotvlm."""
    return json.loads(Path(path).read_text())


def check_budget(shape_name: str, mode: str, dtype: str = "bf16", *, provider: str = "slotvlm",
                 budgets: dict | None = None, shapes: dict | None = None) -> Count:
    """Count (shape, mode, dtype) at full size and raise ``AssertionError`` if its launches or bytes
    exceed ``bench/budgets.json`` (a key missing from a section = no budget of that kind)."""
    budgets = budgets if budgets is not None else load_budgets()
    shapes = shapes or _bench().GPU_SHAPES
    count = count_case(shapes[shape_name], provider, mode, dtype)
    key = f"{shape_name}/{mode}/{dtype}"
    limit = budgets.get("launches", {}).get(key)
    if limit is not None:
        assert count.n <= limit, (
            f"{provider} {key}: {count.n} kernel launches per module call, budget {limit} (bench/budgets.json); "
            "a change undid some fusion"
        )
    limit = budgets.get("gbytes", {}).get(key)
    if limit is not None:
        assert count.bytes / 1e9 <= limit, f"{provider} {key}: {count.bytes / 1e9:.3f} GB moved, budget {limit} GB"
    return count


# ------------------------------------------------------------------------------------ report
COLUMNS = (
    "timestamp,commit,device,torch,triton,shape,mode,provider,dtype,ms,tflops,gbps,peak_mem_mb,"
    "model,launches,custom_ops,gbytes,gflop,ms_device,ms_host,x_eager"
).split(",")


def constants_text() -> str:
    lines = ["model constants (" + MODEL["name"] + "):"]
    for name, gbs in DEVICES.items():
        lines.append(f"  {name}: HBM {gbs / 1e12:.2f} TB/s peak, {MODEL['hbm_efficiency']:.0%} reachable")
    lines += [
        f"  GEMM (aten, cuBLAS) bf16/fp16 {MODEL['gemm_bf16_flops'] / 1e12:.0f} TFLOP/s; Triton tl.dot bf16 "
        f"{MODEL['triton_dot_bf16_flops'] / 1e12:.0f} TFLOP/s; fp32 {MODEL['fp32_flops'] / 1e12:.0f} TFLOP/s",
        f"  per kernel: max(bytes/BW, FLOPs/rate) + {MODEL['min_kernel_us']} us",
        f"  host: {MODEL['host_aten_op_us']} us per aten op, {MODEL['host_custom_op_us']} us per Triton custom op, "
        f"{MODEL['host_triton_launch_us']} us per bare Triton launch; time = max(device sum, host sum)",
    ]
    return "\n".join(lines)


def parse_args(argv=None):
    sa = _bench()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument("--shapes", nargs="+", default=list(sa.GPU_SHAPES), choices=list(sa.GPU_SHAPES))
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=PROVIDERS)
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES,
                   help="bf16 = bf16 parameters and inputs; autocast = fp32 ones under bf16 autocast")
    p.add_argument("--small", action="store_true",
                   help="count bench/slot_attn.py's reduced CPU shapes instead of the full ones (a quick check)")
    p.add_argument("--breakdown", action="store_true", help="also print the kernels of each slotvlm case")
    add_output_args(p, "traffic-model.csv")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    sa = _bench()
    shapes = sa.CPU_SHAPES if args.small else sa.GPU_SHAPES
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    meta = dict(commit=commit(), torch=torch.__version__, triton=triton_version())
    print("MODEL, NOT A MEASUREMENT: launches, bytes and FLOPs counted on fake tensors, times from a roofline model.")
    print(f"commit {meta['commit']} | torch {meta['torch']} | triton {meta['triton']} | "
          f"sizes: {'reduced CPU (--small)' if args.small else 'full benchmark sizes'}")
    print(constants_text())
    head = (f"{'shape':<17}{'mode':<13}{'dtype':<9}{'provider':<15}{'launch':>7}{'GB':>8}{'GFLOP':>8}"
            f"{'H100 ms':>9}{'H200 ms':>9}{'x eager':>8}{'x eager':>8}  bound")
    print("\n" + " " * 92 + "(H100)  (H200)")
    print(head)
    print("-" * len(head))
    rows, skipped, notes, seen = [], {}, set(), {}
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    cases = [(s, m, d) for s in args.shapes for m in args.modes for d in args.dtypes
             if not (m.startswith("step") and d == "autocast")]
    bar = tqdm(total=len(cases) * len(args.providers), desc="counting", file=sys.stderr, leave=False,
               disable=not sys.stderr.isatty()) if tqdm else None
    for shape_name, mode, dtype in cases:
        shape = shapes[shape_name]
        eager = {}
        for provider in sorted(args.providers, key=lambda p: p != "eager"):
            if bar:
                bar.update(1)
            try:
                c = count_case(shape, provider, mode, dtype)
            except Skip as why:
                skipped.setdefault((provider, str(why)), []).append(f"{shape_name}/{mode}/{dtype}")
                continue
            ms = {dev: c.model_ms(bw) for dev, bw in DEVICES.items()}
            if provider == "eager":
                eager = ms
            ratio = {dev: (eager[dev] / ms[dev] if eager else None) for dev in DEVICES}
            bound = "host" if c.host_s() > c.device_s(DEVICES["H100"]) else "device"
            for x in c.launches:
                if "FLOPs unknown" in x.source:
                    notes.add(f"{x.name}: FLOPs unknown (has tl.dot, no TRAFFIC formula) - counted as 0")
            r100, r200 = (f"{ratio[d]:.2f}" if ratio[d] else "" for d in ("H100", "H200"))
            print(f"{shape_name:<17}{mode:<13}{dtype:<9}{provider:<15}{c.n:>7}{c.bytes / 1e9:>8.3f}{c.flops / 1e9:>8.1f}"
                  f"{ms['H100']:>9.3f}{ms['H200']:>9.3f}{r100:>8}{r200:>8}  {bound}")
            if provider == "slotvlm":
                seen[f"{shape_name}/{mode}/{dtype}"] = dict(launches=c.n, gbytes=c.bytes / 1e9, x_eager=ratio["H100"])
            if args.breakdown and provider == "slotvlm":
                _print_breakdown(c)
            for dev, bw in DEVICES.items():
                t = ms[dev]
                rows.append(dict(
                    timestamp=stamp, **meta, device=f"{dev} (model)", shape=shape_name + ("-small" if args.small else ""),
                    mode=mode, provider=provider, dtype="bfloat16" if dtype == "bf16" else "autocast-bfloat16",
                    ms=f"{t:.4f}", tflops=f"{c.flops / t / 1e9:.3f}", gbps=f"{c.bytes / t / 1e6:.1f}", peak_mem_mb="",
                    model=MODEL["name"], launches=c.n, custom_ops=c.custom_ops, gbytes=f"{c.bytes / 1e9:.4f}",
                    gflop=f"{c.flops / 1e9:.3f}", ms_device=f"{1e3 * c.device_s(bw):.4f}", ms_host=f"{1e3 * c.host_s():.4f}",
                    x_eager=f"{ratio[dev]:.3f}" if ratio[dev] else "",
                ))
    if bar:
        bar.close()
    if skipped:
        print("\nnot counted:")
        for (provider, why), where in skipped.items():
            print(f"  {provider}: {why} [{len(where)} case(s)]")
    if notes:
        print("\nnotes:")
        for n in sorted(notes):
            print("  " + n)
    _print_targets(seen)
    print("\nlaunches = kernels per module call (aten ops that are not views/allocations + Triton launches); "
          "GB = HBM bytes read + written; x eager = modelled eager ms / modelled ms. A model, not a measurement.")
    if rows and not args.no_csv:
        path = append_rows(rows, "model", args.csv, save=args.save, columns=COLUMNS, file_name="traffic-model.csv")
        print(f"\nappended {len(rows)} rows to {path}")
    return 0


def _print_targets(seen: dict) -> None:
    """Issue 12's targets (bench/budgets.json "targets") against what was counted for slotvlm."""
    targets = load_budgets().get("targets", {}) if BUDGETS.exists() else {}
    lines = []
    for kind, table in targets.items():
        if kind.startswith("_"):
            continue
        for key, goal in table.items():
            got = seen.get(key, {}).get(kind)
            if got is None:
                continue
            ok = got >= goal if kind == "x_eager" else got <= goal
            word = ">=" if kind == "x_eager" else "<="
            shown = f"{got:>8.0f}" if kind == "launches" else f"{got:>8.2f}"
            lines.append(f"  {key:<34}{kind:<9} {shown} (target {word} {goal:g}): {'holds' if ok else 'MISSES'}"
                         + ("" if kind != "x_eager" else " [H100 model]"))
    if lines:
        print("\nissue-12 targets for slotvlm (bench/budgets.json):")
        print("\n".join(lines))


def _print_breakdown(count: Count) -> None:
    agg: dict[str, list] = {}
    for x in count.launches:
        a = agg.setdefault(x.name, [0, 0, 0])
        a[0] += 1
        a[1] += x.bytes_read + x.bytes_written
        a[2] += x.flops
    for name, (n, b, f) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
        print(f"      {name:<40}{n:>5} x {b / 1e9:>8.3f} GB {f / 1e9:>8.1f} GFLOP")


if __name__ == "__main__":
    sys.exit(main())
