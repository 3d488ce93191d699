"""Functional ops. Each fused op has its plain-PyTorch reference beside it (``*_ref``)."""
from .slot_attention_ref import slot_attention_step_ref, gru_cell_ref

__all__ = ["slot_attention_step_ref", "gru_cell_ref"]
