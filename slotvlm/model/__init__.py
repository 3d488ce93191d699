"""The Slot-VLM model: config, the SlowFast Slots connector (and baselines), and ``SlotVLM``.

The names below load on first use, so that ``slotvlm.model.config`` can be imported (to register
``SlotVLMConfig`` with ``AutoConfig``, see :mod:`slotvlm._autoreg`) without importing the model.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "SlotVLMConfig": ".config",
    "SlotVLM": ".modeling",
    "SlowFastSlots": ".slowfast",
    "PoolingConnector": ".slowfast",
    "QueryFormer": ".slowfast",
    "SlotGrouper": ".slowfast",
    "slowfast_pool_features": ".slowfast",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'slotvlm.model' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
