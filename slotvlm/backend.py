"""Backend selection for the fused ops.

``backend`` arguments take ``"auto"``, ``"torch"`` or ``"triton"``; ``None`` means: read the
environment variable ``SLOTVLM_BACKEND`` and fall back to ``"auto"``.

- ``"torch"``: the plain-PyTorch reference (any device; the CPU path).
- ``"triton"``: the fused Triton kernels. On CUDA tensors they run compiled; on CPU tensors they
  run under Triton's interpreter, which must be switched on with ``TRITON_INTERPRET=1`` before
  triton is first imported (that is how the tests exercise the kernels).
- ``"auto"``: ``"triton"`` for CUDA tensors when triton is importable, else ``"torch"`` (the module
  also keeps dtypes outside ``FUSED_DTYPES``, e.g. float64, on ``"torch"``).
"""
from __future__ import annotations

import importlib.util
import os

import torch

from ._checks import check_choice

BACKENDS = ("auto", "torch", "triton")
ENV_VAR = "SLOTVLM_BACKEND"
FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the Triton kernels take


def requested_backend(backend: str | None) -> str:
    """The backend asked for: the argument, else ``$SLOTVLM_BACKEND``, else ``"auto"``."""
    if backend is None:
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env:
            return check_choice(f"environment variable {ENV_VAR}", env, BACKENDS)
        return "auto"
    return check_choice("backend", backend, BACKENDS)


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """Return the concrete backend (``"torch"`` or ``"triton"``) for tensors on ``device``."""
    want = requested_backend(backend)
    device = torch.device(device)
    if want == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if want == "triton":
        if not triton_available():
            raise ValueError("backend='triton' needs the triton package (pip install triton)")
        if device.type == "cpu" and not interpreter_enabled():
            raise ValueError(
                "backend='triton' on CPU tensors runs the kernels under Triton's interpreter: set "
                "TRITON_INTERPRET=1 in the environment before Python starts, or use backend='torch'"
            )
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"backend='triton' supports CPU (interpreter) and CUDA tensors, got device {device}")
    return want
