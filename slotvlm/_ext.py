"""Loads the C++ extension ``slotvlm._C`` (torch first, as the extension links against it)."""
from __future__ import annotations

import torch  # noqa: F401  (must be imported before the extension)

REBUILD_HINT = "pip install setuptools wheel ninja && pip install --no-build-isolation -e ."

try:
    from slotvlm import _C  # noqa: F401  (registers torch.ops.slotvlm.*)
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        f"slotvlm's C++ extension slotvlm._C is missing or was built against another torch "
        f"(torch {torch.__version__} is installed): {exc}. Rebuild it from the repository root with:\n"
        f"    {REBUILD_HINT}"
    ) from exc

ops = torch.ops.slotvlm
