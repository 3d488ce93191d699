"""Per-launch HBM/FLOP model of every Triton kernel that documents one.

``TRAFFIC``: kernel name -> ``fn(grid, args) -> (bytes read, bytes written, FLOPs)``; used by
``bench/traffic.py`` and the launch-budget tests. Importing this module imports triton.

The kernel sources live in the repository's top-level ``kernels/`` folder and are imported as
``slotvlm.kernels`` (``slotvlm/kernels`` points at that folder; the folder has no ``__init__.py`` on
purpose, so a checkout's root on ``sys.path`` never shadows the PyPI package called ``kernels``).
"""
from __future__ import annotations

from . import layer_norm, slot_attention_deferred, slot_iterations, slot_iterations_bwd

TRAFFIC = {**slot_attention_deferred.TRAFFIC, **layer_norm.TRAFFIC, **slot_iterations.TRAFFIC,
           **slot_iterations_bwd.TRAFFIC}
