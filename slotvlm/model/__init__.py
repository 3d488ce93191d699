"""The Slot-VLM model: config, the SlowFast Slots connector (and baselines), and ``SlotVLM``."""
from .config import SlotVLMConfig
from .modeling import SlotVLM
from .slowfast import PoolingConnector, QueryFormer, SlotGrouper, SlowFastSlots, slowfast_pool_features

__all__ = ["SlotVLM", "SlotVLMConfig", "SlowFastSlots", "PoolingConnector", "QueryFormer", "SlotGrouper",
           "slowfast_pool_features"]
