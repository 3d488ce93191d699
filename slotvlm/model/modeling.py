"""``SlotVLM``: frozen CLIP vision tower → trainable connector → frozen causal LLM.

Example::

    from slotvlm import SlotVLM, SlotVLMConfig
    model = SlotVLM.from_config(SlotVLMConfig())            # CLIP ViT-L/14 + Vicuna-7B, fresh slots
    print(model.answer("clip.mp4", "What is the man doing?"))
    model.save_pretrained("out/")                           # connector weights + config only
    model = SlotVLM.from_pretrained("out/")
"""
from __future__ import annotations

import importlib.util
import os
from typing import Sequence

import torch
from torch import nn

from .._checks import check_tensor, describe
from ..conversation import VIDEO_TOKEN, get_template
from .config import CONFIG_NAME, WEIGHTS_NAME, SlotVLMConfig
from .slowfast import build_connector

IGNORE_INDEX = -100

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def parse_dtype(dtype) -> torch.dtype | None:
    """``None`` / a ``torch.dtype`` / a name (``"bf16"``, ``"float32"``, ...) → ``torch.dtype``."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or a torch.dtype, got {dtype!r}")


def resolve_device_dtype(device=None, dtype=None) -> tuple[torch.device, torch.dtype]:
    """Defaults: CUDA when available; bf16 for the frozen base models on CUDA, fp32 on CPU."""
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = parse_dtype(dtype)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, dtype


def _dtype_kwarg() -> str:
    import transformers  # noqa: PLC0415

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def _llm_attn_implementation(device: torch.device, dtype: torch.dtype) -> str:
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and importlib.util.find_spec("flash_attn"):
        return "flash_attention_2"
    return "sdpa"


def _local_or_id(name: str) -> str:
    return os.path.abspath(name) if os.path.isdir(name) else name


class SlotVLM(nn.Module):
    """A Slot-VLM: ``vision`` (CLIPVisionModel, frozen) → ``connector`` (trainable) → ``llm`` (frozen).

    Attributes: ``config`` (:class:`SlotVLMConfig`), ``vision``, ``llm``, ``tokenizer``,
    ``connector`` (:class:`SlowFastSlots` or a baseline). The connector is kept in fp32; its
    output is cast to the LLM's dtype.
    """

    def __init__(self, config: SlotVLMConfig, vision: nn.Module, llm: nn.Module, tokenizer, connector: nn.Module):
        super().__init__()
        self.config = config
        self.vision = vision
        self.llm = llm
        self.tokenizer = tokenizer
        self.connector = connector
        self.conversation = get_template(config.conv_template)
        for module in (self.vision, self.llm):
            module.requires_grad_(False)
            module.eval()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: SlotVLMConfig | dict, device=None, dtype=None, *, backend: str | None = None,
                    seed: int | None = None) -> "SlotVLM":
        """Load the base models named by ``config`` (hub id or local path) and build a fresh connector.

        Args:
            device: default CUDA when available, else CPU.
            dtype: dtype of the frozen base models (default bf16 on CUDA, fp32 on CPU).
            backend: slot-attention backend (``"auto"``/``"torch"``/``"triton"``, default ``$SLOTVLM_BACKEND``).
            seed: seed for the connector's initialisation (default: the global RNG).
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel  # noqa: PLC0415

        cfg = SlotVLMConfig.from_dict(config) if isinstance(config, dict) else config.replace()
        cfg.validate()
        device, dtype = resolve_device_dtype(device, dtype)
        cfg.vision_model = _local_or_id(cfg.vision_model)
        cfg.llm_model = _local_or_id(cfg.llm_model)
        if cfg.tokenizer is not None:
            cfg.tokenizer = _local_or_id(cfg.tokenizer)
        load = {_dtype_kwarg(): dtype}
        if device.type == "cuda" and importlib.util.find_spec("accelerate"):
            load["device_map"] = {"": str(device)}  # straight onto the GPU, no full copy in host memory
        vision = CLIPVisionModel.from_pretrained(cfg.vision_model, **load, attn_implementation="sdpa")
        llm = AutoModelForCausalLM.from_pretrained(
            cfg.llm_model, **load, attn_implementation=_llm_attn_implementation(device, dtype)
        )
        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.llm_model)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token

        vc = vision.config
        if vc.image_size % vc.patch_size:
            raise ValueError(f"vision image_size={vc.image_size} is not a multiple of patch_size={vc.patch_size}")
        cfg.vision_hidden = vc.hidden_size
        cfg.grid_size = vc.image_size // vc.patch_size
        cfg.image_size = vc.image_size
        cfg.llm_hidden = llm.get_input_embeddings().embedding_dim
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                connector = build_connector(cfg, cfg.vision_hidden, cfg.llm_hidden, backend=backend)
        else:
            connector = build_connector(cfg, cfg.vision_hidden, cfg.llm_hidden, backend=backend)
        model = cls(cfg, vision, llm, tokenizer, connector.float())
        model.vision.to(device)
        model.llm.to(device)
        model.connector.to(device)
        return model

    @classmethod
    def from_pretrained(cls, directory: str, device=None, dtype=None, *, backend: str | None = None) -> "SlotVLM":
        """Restore a model written by :meth:`save_pretrained`: the base models are loaded by the id/path
        its config names, the connector from ``connector.safetensors``."""
        from safetensors.torch import load_file  # noqa: PLC0415

        if not os.path.isdir(directory) or not os.path.isfile(os.path.join(directory, CONFIG_NAME)):
            raise ValueError(f"directory={directory!r} is not a Slot-VLM model directory (no {CONFIG_NAME})")
        cfg = SlotVLMConfig.load(directory)
        model = cls.from_config(cfg, device=device, dtype=dtype, backend=backend)
        weights = os.path.join(directory, WEIGHTS_NAME)
        if not os.path.isfile(weights):
            raise ValueError(f"directory={directory!r} has a config but no {WEIGHTS_NAME}")
        state = load_file(weights, device=str(next(model.connector.parameters()).device))
        model.connector.load_state_dict(state, strict=True)
        return model

    def save_pretrained(self, directory: str) -> str:
        """Write ``slotvlm_config.json`` and ``connector.safetensors`` (the trainable parts only)."""
        from safetensors.torch import save_file  # noqa: PLC0415

        os.makedirs(directory, exist_ok=True)
        self.config.save(directory)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.connector.state_dict().items()}
        save_file(state, os.path.join(directory, WEIGHTS_NAME), metadata={"format": "pt"})
        return directory

    def train(self, mode: bool = True) -> "SlotVLM":
        """Only the connector changes mode; the frozen base models stay in eval mode."""
        super().train(mode)
        self.vision.eval()
        self.llm.eval()
        return self

    def trainable_parameters(self):
        return self.connector.parameters()

    @property
    def device(self) -> torch.device:
        return next(self.connector.parameters()).device

    # ------------------------------------------------------------------ video → embeddings
    @torch.no_grad()
    def vision_features(self, pixel_values: torch.Tensor, chunk_size: int = 64) -> torch.Tensor:
        """CLIP features: ``pixel_values [T, 3, S, S]`` → ``[T, G, G, Dv]`` (the ``vision_layer``
        hidden state, CLS dropped), in the vision tower's dtype, no grad."""
        s = self.config.image_size
        check_tensor("pixel_values", pixel_values, shape=(None, 3, s, s), floating=True)
        g = self.config.grid_size
        vdev = next(self.vision.parameters()).device
        vdtype = next(self.vision.parameters()).dtype
        out = []
        for chunk in pixel_values.split(chunk_size):
            hs = self.vision(pixel_values=chunk.to(vdev, vdtype), output_hidden_states=True).hidden_states
            x = hs[self.config.vision_layer][:, 1:]
            out.append(x.reshape(x.shape[0], g, g, x.shape[-1]))
        return torch.cat(out, 0)

    def encode_video(self, pixel_values) -> torch.Tensor:
        """``pixel_values [B, T, 3, S, S]`` or a list of ``[T_i, 3, S, S]`` → ``[B, L, H_llm]``."""
        if isinstance(pixel_values, torch.Tensor):
            check_tensor("pixel_values", pixel_values, ndim=5, floating=True)
            videos = list(pixel_values.unbind(0))
        else:
            videos = list(pixel_values)
        if not videos:
            raise ValueError("pixel_values is empty: need at least one video")
        for i, v in enumerate(videos):
            check_tensor(f"pixel_values[{i}]", v, ndim=4, floating=True)
            if v.shape[0] < 1:
                raise ValueError(f"pixel_values[{i}] has no frames: {describe(v)}")
        # all frames of all videos through CLIP together (full chunks), then split per video
        feats = self.vision_features(torch.cat(videos, 0))
        return self.encode_features(list(feats.split([v.shape[0] for v in videos])))

    def encode_features(self, features=None, *, slow=None, fast=None, return_attn: bool = False):
        """Connector on CLIP features → ``[B, L, H_llm]`` in the LLM's dtype.

        Either ``features``: a list of ``[T_i, G, G, Dv]`` (or ``[B, T, G, G, Dv]``), or the cached
        form ``slow=[B, t_d, G, G, Dv]``, ``fast=`` list of ``[T_i, G/s, G/s, Dv]``.
        With ``return_attn=True`` also the connector's attention maps (see :class:`SlowFastSlots`).
        """
        dev = self.device

        def move(x):
            if x is None:
                return None
            if isinstance(x, torch.Tensor):
                return x.to(dev)
            return [t.to(dev) for t in x]

        out = self.connector(move(features), slow=move(slow), fast=move(fast), return_attn=return_attn)
        llm_dtype = self.llm.get_input_embeddings().weight.dtype
        if return_attn:
            return out[0].to(llm_dtype), out[1]
        return out.to(llm_dtype)

    # ------------------------------------------------------------------ prompts
    def _token_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def build_inputs(self, video_embeds: torch.Tensor, questions: Sequence[str],
                     answers: Sequence[str] | None = None, *, history=None) -> dict:
        """Embed the prompts with the video embeddings in place of ``<video>``.

        Args:
            video_embeds: ``[B, L, H]`` from :meth:`encode_video` / :meth:`encode_features`.
            questions: B user questions (``<video>`` is put before each unless it already has one).
            answers: B answers for training (each followed by EOS), or None for generation.
            history: None, or per video a list of earlier ``(question, answer)`` turns (multi-turn
                chat); the video goes into the first turn.

        Returns:
            dict with ``inputs_embeds [B, S, H]``, ``attention_mask [B, S]`` and, with answers,
            ``labels [B, S]`` (-100 everywhere except the answer tokens and their EOS). Training
            batches are right-padded, generation batches left-padded.
        """
        check_tensor("video_embeds", video_embeds, ndim=3, floating=True)
        b = video_embeds.shape[0]
        if isinstance(questions, str) or len(questions) != b:
            raise ValueError(f"questions must be a list of {b} strings (one per video), got {questions!r}")
        if answers is not None and (isinstance(answers, str) or len(answers) != b):
            raise ValueError(f"answers must be None or a list of {b} strings, got {answers!r}")
        if history is not None and len(history) != b:
            raise ValueError(f"history must be None or a list of {b} turn lists, got {history!r}")
        tok = self.tokenizer
        embed = self.llm.get_input_embeddings()
        dev, dtype = embed.weight.device, embed.weight.dtype
        video_embeds = video_embeds.to(dev, dtype)
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        seqs, labels = [], []
        for i, q in enumerate(questions):
            prompt = self.conversation.prompt(q, history[i] if history is not None else None)
            if prompt.count(VIDEO_TOKEN) != 1:
                raise ValueError(f"questions[{i}] must contain {VIDEO_TOKEN!r} at most once, got {q!r}")
            before, after = prompt.split(VIDEO_TOKEN)
            ids_before = torch.tensor(bos + self._token_ids(before), dtype=torch.long, device=dev)
            ids_after = self._token_ids(after)
            lab = [IGNORE_INDEX] * (len(ids_before) + video_embeds.shape[1] + len(ids_after))
            if answers is not None:
                ids_ans = self._token_ids(str(answers[i]).strip()) + [tok.eos_token_id]
                ids_after = ids_after + ids_ans
                lab = lab + ids_ans
            ids_after = torch.tensor(ids_after, dtype=torch.long, device=dev)
            seqs.append(torch.cat([embed(ids_before), video_embeds[i], embed(ids_after)], 0))
            labels.append(lab)
        length = max(s.shape[0] for s in seqs)
        h = video_embeds.shape[-1]
        inputs = torch.zeros(b, length, h, dtype=dtype, device=dev)
        mask = torch.zeros(b, length, dtype=torch.long, device=dev)
        lab_t = torch.full((b, length), IGNORE_INDEX, dtype=torch.long, device=dev)
        left = answers is None
        for i, s in enumerate(seqs):
            n = s.shape[0]
            sl = slice(length - n, length) if left else slice(0, n)
            inputs[i, sl] = s
            mask[i, sl] = 1
            lab_t[i, sl] = torch.tensor(labels[i], dtype=torch.long, device=dev)
        out = {"inputs_embeds": inputs, "attention_mask": mask}
        if answers is not None:
            out["labels"] = lab_t
        return out

    # ------------------------------------------------------------------ LLM
    def forward(self, video_embeds: torch.Tensor | None = None, questions: Sequence[str] | None = None,
                answers: Sequence[str] | None = None, *, pixel_values=None, features=None, slow=None,
                fast=None, **llm_kwargs):
        """Teacher-forced pass through the LLM; ``.loss`` is the answer-token cross-entropy.

        Give ``video_embeds [B, L, H]`` or one of ``pixel_values`` / ``features`` / ``slow``+``fast``.
        """
        if video_embeds is None:
            if pixel_values is not None:
                video_embeds = self.encode_video(pixel_values)
            elif features is not None or slow is not None or fast is not None:
                video_embeds = self.encode_features(features, slow=slow, fast=fast)
            else:
                raise ValueError("forward needs video_embeds, pixel_values, features or slow/fast")
        if questions is None:
            raise ValueError("forward needs questions (a list of strings)")
        inputs = self.build_inputs(video_embeds, questions, answers)
        return self.llm(**inputs, **llm_kwargs)

    @torch.no_grad()
    def generate(self, video_embeds: torch.Tensor, questions: Sequence[str], max_new_tokens: int = 64,
                 do_sample: bool = False, *, history=None, **gen_kwargs) -> list[str]:
        """Answers for a batch: ``video_embeds [B, L, H]`` + B questions → B strings (greedy by
        default). ``history``: as in :meth:`build_inputs`; other keywords go to the LLM's generate."""
        inputs = self.build_inputs(video_embeds, questions, history=history)
        tok = self.tokenizer
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id)
        if not do_sample:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        kwargs.update(gen_kwargs)
        out = self.llm.generate(**inputs, **kwargs)
        return [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]

    def load_video(self, path: str, max_frames: int | None = None) -> torch.Tensor:
        """Decode ``path`` at ``config.fps`` → CLIP-ready ``[T, 3, S, S]``."""
        from ..video import load_video, preprocess  # noqa: PLC0415

        frames, _ = load_video(path, fps=self.config.fps, max_frames=max_frames or self.config.max_frames)
        return preprocess(frames, size=self.config.image_size)

    def answer(self, video, question: str, **gen) -> str:
        """One answer: ``video`` is a file path or ``pixel_values [T, 3, S, S]``."""
        if isinstance(video, (str, os.PathLike)):
            video = self.load_video(str(video))
        elif not isinstance(video, torch.Tensor):
            raise ValueError(f"video must be a path or a [T, 3, S, S] tensor, got {type(video).__name__}")
        elif video.dim() != 4:
            raise ValueError(f"video must have shape [T, 3, S, S], got {describe(video)}")
        embeds = self.encode_video([video])
        return self.generate(embeds, [question], **gen)[0]
