"""Training: stage-1 slot reconstruction, stage-2/3 instruction tuning (see :mod:`.trainer`)."""
from .objectives import ConnectorForward, Reconstruction, SlotDecoder
from .trainer import TrainConfig, read_log, train

__all__ = ["TrainConfig", "train", "read_log", "Reconstruction", "SlotDecoder", "ConnectorForward"]
