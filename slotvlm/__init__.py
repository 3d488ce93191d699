"""slotvlm: fused, trainable Slot Attention and the Slot-VLM video-language model.

Quick use::

    from slotvlm import SlotAttention
    attn = SlotAttention(num_slots=7, dim=64)
    slots = attn(torch.randn(2, 4096, 64))       # [2, 7, 64]
"""
from __future__ import annotations

import importlib

import torch  # noqa: F401  (loads libtorch, which the C++ extension slotvlm._C links against)

__version__ = "0.1.0"

# Public names, imported on first use so that ``import slotvlm`` stays light (torch only: no
# transformers, no triton, no av until needed).
_LAZY = {
    "SlotAttention": "slotvlm.nn.slot_attention",
    "MultiHeadSlotAttention": "slotvlm.nn.slot_attention",
    "slot_attention_step": "slotvlm.ops.fused",
    "slot_attention_step_varlen": "slotvlm.ops.fused",
    "gru_cell": "slotvlm.ops.fused",
    "SlotSSM": "slotvlm.nn.slot_ssm",
    "SlotVLM": "slotvlm.model.modeling",
    "SlotVLMConfig": "slotvlm.model.config",
    "SlowFastSlots": "slotvlm.model.slowfast",
    "FeatureCache": "slotvlm.data.features",
    "TrainConfig": "slotvlm.train.trainer",
    "load_video": "slotvlm.video",
    "preprocess": "slotvlm.video",
    "VideoError": "slotvlm.video",
    "slowfast_pool": "slotvlm.video",
}

__all__ = sorted(_LAZY) + ["__version__"]

# transformers' AutoConfig / AutoModel know "slotvlm" as soon as transformers loads them (or now, if
# it already has); nothing of transformers is imported here (see slotvlm/_autoreg.py).
from . import _autoreg  # noqa: E402

_autoreg.install()


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'slotvlm' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
