"""``SlotVLMConfig``: every size and switch of a Slot-VLM, JSON-serialisable.

The defaults are the paper's model: CLIP ViT-L/14 (penultimate layer, 16×16 tokens of width 1024),
SlowFast Slots (8 frames × 8 object slots + 4×4 positions × 8 event slots = 192 tokens, slot width
1024, 3 iterations), Vicuna-7B v1.5.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields

from .._checks import check_choice, check_positive_int

CONNECTORS = ("slowfast", "pooling", "qformer")
EVENT_ENCODERS = ("slot_attention", "slot_ssm")
CONFIG_NAME = "slotvlm_config.json"
WEIGHTS_NAME = "connector.safetensors"


@dataclass
class SlotVLMConfig:
    """Configuration of :class:`slotvlm.SlotVLM` and its connector.

    Base models
        vision_model: hub id or local path of a CLIP checkpoint (its vision tower is used).
        llm_model: hub id or local path of a causal LM.
        tokenizer: hub id or path of the tokenizer (default: ``llm_model``).
        vision_layer: which hidden state of the vision tower to use (-2 = penultimate, the paper's).

    Connector
        connector: ``"slowfast"`` (Slot-VLM), ``"pooling"`` (Video-ChatGPT spatial + temporal
            pooling, 356 tokens) or ``"qformer"`` (learned queries with cross-attention in place of
            slot attention, same branch layout as ``"slowfast"``).
        use_slow / use_fast: object branch / event branch on or off (object-only: 64 tokens,
            event-only: 128, both: 192).
        num_slow_frames: t_d, frames the object branch samples uniformly (repeats when T < t_d).
        pool_stride: the event branch's average-pooling stride over the 16×16 grid (4 → 4×4).
        num_slots_slow / num_slots_fast: N_s object slots per frame / N_f event slots per position.
        slot_dim: width of the slots (inputs are projected to it when the vision width differs).
        slot_iters: slot-attention iterations.
        slot_hidden_dim: hidden width of the slot MLP.
        proj_dim: width of the S-Proj / F-Proj outputs (before Proj to the LLM width).
        max_frames: size of the event branch's temporal position table and the default frame cap
            when loading videos; longer inputs get the table linearly interpolated.
        event_encoder: ``"slot_attention"`` or ``"slot_ssm"`` (SlotSSM over time, needs
            ``slotvlm.nn.slot_ssm``).
        eval_noise_seed: seed of the fixed Gaussian draw used for the initial slots in eval mode
            (see :class:`slotvlm.SlowFastSlots`).
        pooling_num_frames: temporal tokens of the pooling baseline (Video-ChatGPT: 100).
        qformer_layers / qformer_heads: size of the Q-Former blocks.

    Video input
        fps: frames per second sampled from a video file (the paper: 1).
        image_size: side of the square frames fed to CLIP.

    Filled in from the base models by :meth:`SlotVLM.from_config`
        vision_hidden, llm_hidden, grid_size.
    """

    vision_model: str = "openai/clip-vit-large-patch14"
    llm_model: str = "lmsys/vicuna-7b-v1.5"
    tokenizer: str | None = None
    vision_layer: int = -2
    connector: str = "slowfast"
    use_slow: bool = True
    use_fast: bool = True
    num_slow_frames: int = 8
    pool_stride: int = 4
    num_slots_slow: int = 8
    num_slots_fast: int = 8
    slot_dim: int = 1024
    slot_iters: int = 3
    slot_hidden_dim: int = 1024
    proj_dim: int = 1024
    max_frames: int = 256
    event_encoder: str = "slot_attention"
    eval_noise_seed: int = 0
    pooling_num_frames: int = 100
    qformer_layers: int = 2
    qformer_heads: int = 8
    fps: float = 1.0
    image_size: int = 224
    conv_template: str = "vicuna_v1"
    vision_hidden: int | None = None
    llm_hidden: int | None = None
    grid_size: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    def validate(self) -> "SlotVLMConfig":
        check_choice("connector", self.connector, CONNECTORS)
        check_choice("event_encoder", self.event_encoder, EVENT_ENCODERS)
        for name in (
            "num_slow_frames", "pool_stride", "num_slots_slow", "num_slots_fast", "slot_dim",
            "slot_iters", "slot_hidden_dim", "proj_dim", "max_frames", "pooling_num_frames",
            "qformer_layers", "qformer_heads", "image_size",
        ):
            check_positive_int(name, getattr(self, name))
        if self.connector != "pooling" and not (self.use_slow or self.use_fast):
            raise ValueError(
                f"at least one branch must be on: use_slow={self.use_slow!r}, use_fast={self.use_fast!r}"
            )
        if not (isinstance(self.fps, (int, float)) and self.fps > 0):
            raise ValueError(f"fps must be a positive number, got {self.fps!r}")
        return self

    @property
    def num_tokens(self) -> int:
        """L, the number of video tokens handed to the LLM."""
        if self.connector == "pooling":
            grid = self.grid_size or 16
            return grid * grid + self.pooling_num_frames
        grid = self.grid_size or 16
        positions = (grid // self.pool_stride) ** 2
        return (self.num_slow_frames * self.num_slots_slow if self.use_slow else 0) + (
            positions * self.num_slots_fast if self.use_fast else 0
        )

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SlotVLMConfig":
        if not isinstance(d, dict):
            raise ValueError(f"config must be a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"model_type", "slotvlm_version"})
        if unknown:
            raise ValueError(f"unknown SlotVLMConfig fields: {unknown}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_json(self) -> str:
        from .. import __version__

        return json.dumps({"model_type": "slotvlm", "slotvlm_version": __version__, **self.to_dict()}, indent=2)

    def save(self, directory: str) -> str:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, CONFIG_NAME)
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, directory: str) -> "SlotVLMConfig":
        path = os.path.join(directory, CONFIG_NAME) if os.path.isdir(directory) else directory
        if not os.path.isfile(path):
            raise ValueError(f"no Slot-VLM config at {path!r} (expected {CONFIG_NAME} in the model directory)")
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def replace(self, **changes) -> "SlotVLMConfig":
        return dataclasses.replace(self, **changes)
