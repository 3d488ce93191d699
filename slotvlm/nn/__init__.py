"""``nn.Module``s users import."""
from .slot_attention import MultiHeadSlotAttention, SlotAttention

__all__ = ["SlotAttention", "MultiHeadSlotAttention"]
