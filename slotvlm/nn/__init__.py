"""``nn.Module``s users import."""
from .slot_attention import MultiHeadSlotAttention, SlotAttention
from .slot_ssm import SlotSSM, SlotSSMState

__all__ = ["SlotAttention", "MultiHeadSlotAttention", "SlotSSM", "SlotSSMState"]
