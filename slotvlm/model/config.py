"""``SlotVLMConfig``: every size and switch of a Slot-VLM, a transformers ``PreTrainedConfig``.

The defaults are the paper's model: CLIP ViT-L/14 (penultimate layer, 16×16 tokens of width 1024),
SlowFast Slots (8 frames × 8 object slots + 4×4 positions × 8 event slots = 192 tokens, slot width
1024, 3 iterations), Vicuna-7B v1.5.

Saved as ``config.json`` (``model_type: "slotvlm"``, registered with ``AutoConfig``); folders
written by slotvlm 0.1 (``slotvlm_config.json``) still load. Base-model references are written as
given when they are hub ids and as paths relative to the model folder (``./clip``, ``../llm``) when
they are local folders, and resolved against the folder on load (see :func:`resolve_reference`).
"""
from __future__ import annotations

import json
import os
from dataclasses import field, fields

from transformers import PreTrainedConfig

from .._checks import check_choice, check_positive_int
from ..conversation import CHOICES as TEMPLATE_CHOICES

CONNECTORS = ("slowfast", "pooling", "qformer")
EVENT_ENCODERS = ("slot_attention", "slot_ssm")
CONFIG_NAME = "config.json"
LEGACY_CONFIG_NAME = "slotvlm_config.json"  # slotvlm 0.1 folders
WEIGHTS_NAME = "connector.safetensors"
REFERENCE_FIELDS = ("vision_model", "llm_model", "tokenizer")


def looks_local(name: str) -> bool:
    """True when ``name`` is meant as a local path rather than a hub id ``org/name``: it is absolute,
    starts with ``.`` or ``~``, holds a backslash or more than one ``/``, ends with ``/``, or its first
    component is an existing local folder (``tiny/clipp`` when ``tiny/`` exists)."""
    name = str(name)
    if os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name or name.endswith("/"):
        return True
    parts = name.split("/")
    if len(parts) > 2:
        return True
    return len(parts) == 2 and os.path.isdir(parts[0])


def check_reference(argument: str, name: str) -> str:
    """Return ``name`` (a hub id, or an existing local path made absolute). A name that looks local
    (:func:`looks_local`) but does not exist raises ``ValueError`` naming ``argument`` — at once,
    never a hub lookup."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{argument} must be a hub id or a local path, got {name!r}")
    expanded = os.path.expanduser(name)
    if os.path.exists(expanded):
        return os.path.abspath(expanded)
    if looks_local(name):
        raise ValueError(f"{argument}={name!r} looks like a local path but does not exist "
                         f"(resolved to {os.path.abspath(expanded)!r}); hub ids look like 'org/name'")
    return name


def resolve_reference(argument: str, name: str | None, folder: str) -> str | None:
    """A base-model reference read from the config in ``folder``: ``./x`` / ``../x`` are relative to
    ``folder``, absolute paths are kept (older folders), anything else is a hub id."""
    if name is None:
        return None
    if name.startswith(("./", "../", ".\\", "..\\")) or name in (".", ".."):
        path = os.path.normpath(os.path.join(folder, name))
        if not os.path.exists(path):
            raise ValueError(f"{argument}={name!r} in {folder!r} points to {path!r}, which does not exist "
                             f"(was the model folder moved without its base models?)")
        return path
    if os.path.isabs(name) and not os.path.exists(name):
        raise ValueError(f"{argument}={name!r} in {folder!r} does not exist (an absolute path written by an "
                         f"older slotvlm; edit {CONFIG_NAME} or re-save the model)")
    return name


def relative_reference(name: str | None, folder: str) -> str | None:
    """How ``name`` is written into ``folder``'s config: an existing local path relative to ``folder``
    (``./clip``, ``../llm``), a hub id as given."""
    if name is None or not os.path.exists(name):
        return name
    rel = os.path.relpath(os.path.abspath(name), os.path.abspath(folder)).replace(os.sep, "/")
    return rel if rel.startswith("..") else "./" + rel


class SlotVLMConfig(PreTrainedConfig):
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

    Provenance (written into the model card)
        training: a list of ``{"stage", "branch", "data", "steps", ...}`` records, appended by
            ``slotvlm train``-style tools; empty for an untrained connector.
    """

    model_type = "slotvlm"

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
    conv_template: str = "auto"
    vision_hidden: int | None = None
    llm_hidden: int | None = None
    grid_size: int | None = None
    training: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def __post_init__(self, **kwargs):
        kwargs.pop("slotvlm_version", None)
        super().__post_init__(**kwargs)
        self.validate()

    def validate(self) -> "SlotVLMConfig":
        """Check every field; ``ValueError`` naming the field and the value."""
        check_choice("connector", self.connector, CONNECTORS)
        check_choice("event_encoder", self.event_encoder, EVENT_ENCODERS)
        check_choice("conv_template", self.conv_template, TEMPLATE_CHOICES)
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
    @classmethod
    def field_names(cls) -> list[str]:
        """The Slot-VLM fields (not the ones every transformers config has)."""
        base = {f.name for f in fields(PreTrainedConfig)}
        return [f.name for f in fields(cls) if f.name not in base and not f.name.startswith("_")]

    def slot_dict(self) -> dict:
        """The Slot-VLM fields as a plain dict (what :meth:`replace` and the model card use)."""
        return {k: getattr(self, k) for k in self.field_names()}

    @classmethod
    def from_slot_dict(cls, d: dict) -> "SlotVLMConfig":
        """Strict constructor from a dict of Slot-VLM fields: unknown keys are an error."""
        if not isinstance(d, dict):
            raise ValueError(f"config must be a dict, got {type(d).__name__}")
        known = set(cls.field_names())
        ignored = {f.name for f in fields(PreTrainedConfig)} | {"model_type", "slotvlm_version", "_name_or_path"}
        unknown = sorted(set(d) - known - ignored)
        if unknown:
            raise ValueError(f"unknown SlotVLMConfig fields: {unknown}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_json_text(self, directory: str) -> str:
        """The ``config.json`` text for a model folder ``directory`` (local base-model paths made
        relative to it)."""
        from .. import __version__  # noqa: PLC0415

        import transformers  # noqa: PLC0415

        d = self.slot_dict()
        for k in REFERENCE_FIELDS:
            d[k] = relative_reference(d.get(k), directory)
        d.update(model_type=self.model_type, architectures=["SlotVLM"], slotvlm_version=__version__,
                 transformers_version=transformers.__version__)
        return json.dumps(dict(sorted(d.items())), indent=2) + "\n"

    def save(self, directory: str) -> str:
        """Write ``config.json`` into ``directory`` with local base-model paths made relative to it
        (crash-safe: :func:`slotvlm._atomic.commit_files`)."""
        from .._atomic import commit_files, write_text  # noqa: PLC0415

        text = self.to_json_text(directory)
        commit_files(directory, {CONFIG_NAME: lambda p: write_text(p, text)})
        return os.path.join(directory, CONFIG_NAME)

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """transformers' name for :meth:`save` (``push_to_hub`` is :meth:`SlotVLM.push_to_hub`'s job)."""
        if push_to_hub:
            raise ValueError("push a whole model with SlotVLM.push_to_hub, not its config alone")
        self.save(str(save_directory))

    @classmethod
    def load(cls, directory: str) -> "SlotVLMConfig":
        """Read the config of a local model folder (``config.json``, or an older ``slotvlm_config.json``)
        with relative base-model references resolved against the folder. A save into the folder that
        was interrupted is finished or discarded first (:func:`slotvlm._atomic.recover`)."""
        from .._atomic import recover  # noqa: PLC0415

        directory = str(directory)
        if os.path.isdir(directory):
            recover(directory)
            path = os.path.join(directory, CONFIG_NAME)
            if not os.path.isfile(path) and os.path.isfile(os.path.join(directory, LEGACY_CONFIG_NAME)):
                path = os.path.join(directory, LEGACY_CONFIG_NAME)
        else:
            path, directory = directory, os.path.dirname(os.path.abspath(directory))
        if not os.path.isfile(path):
            raise ValueError(f"no Slot-VLM config at {path!r} (expected {CONFIG_NAME} in the model directory)")
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        if d.get("model_type", "slotvlm") != "slotvlm":
            raise ValueError(f"{path!r} has model_type={d.get('model_type')!r}, not a Slot-VLM config")
        for k in REFERENCE_FIELDS:
            d[k] = resolve_reference(k, d.get(k), directory)
        return cls.from_slot_dict(d)

    def replace(self, **changes) -> "SlotVLMConfig":
        """A copy with some fields changed."""
        return type(self).from_slot_dict({**self.slot_dict(), **changes})
