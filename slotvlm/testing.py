"""Tiny random checkpoints and synthetic clips for tests and examples (no downloads).

Everything is saved with ``save_pretrained`` to a folder and loaded back through the same
``from_pretrained`` code path as real hub ids::

    from slotvlm.testing import make_tiny_slotvlm, make_clip
    model_dir = make_tiny_slotvlm(tmp_path)            # tiny CLIP + tiny LLaMA + fresh connector
    make_clip(tmp_path / "clip.mp4", seconds=7, fps=2, size=64)
"""
from __future__ import annotations

import os

import numpy as np
import torch

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]

_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: ASSISTANT: What is happening in the video? Describe the video in detail.",
    "A man is playing a guitar on the stage while people are dancing.",
    "A woman is cooking food in the kitchen and cutting vegetables.",
    "Two dogs are running in the park. A red ball moves across a blue field.",
    "How many people are there? What color is the car? Is the cat sleeping? yes no",
    "zero one two three four five six seven eight nine ten",
]

TINY_CLIP = dict(image_size=224, patch_size=14, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, projection_dim=32)
TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=2048)
# Connector sizes that keep the paper's token counts (8×8 object + 4×4×8 event = 192) but tiny widths.
TINY_CONNECTOR = dict(slot_dim=32, slot_hidden_dim=32, proj_dim=32, max_frames=64, qformer_heads=4)
# A Zephyr-style chat template for the tiny tokenizer of ``slotvlm init --tiny`` (rendered by
# ``tokenizer.apply_chat_template``); the BOS token is written by the template itself.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def make_tiny_clip(directory, seed: int = 0, full: bool = False, **overrides) -> str:
    """A random ``CLIPVisionModel`` (224 px, patch 14 → 16×16 grid, width 32, 2 layers) saved to
    ``directory``; returns the path. ``full=True`` saves a whole ``CLIPModel`` (text tower too), the
    layout of ``openai/clip-vit-large-patch14``."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel  # noqa: PLC0415

    directory = str(directory)
    vision = {**TINY_CLIP, **overrides}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if full:
            text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                        vocab_size=64, bos_token_id=0, eos_token_id=1, pad_token_id=1)
            vision.pop("projection_dim", None)
            model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32))
        else:
            model = CLIPVisionModel(CLIPVisionConfig(**vision))
    model.save_pretrained(directory)
    return directory


def make_tiny_tokenizer(directory=None, vocab_size: int = 400, chat_template: str | None = None,
                        corpus: list[str] | None = None):
    """A byte-level BPE tokenizer trained with ``tokenizers`` on a small corpus, wrapped as a
    ``PreTrainedTokenizerFast`` with LLaMA's special tokens (``<s>`` prepended by default) and,
    when given, a jinja ``chat_template`` (e.g. :data:`TINY_CHAT_TEMPLATE`).

    ``corpus`` (sentences) is added to the built-in one: with a ``vocab_size`` large enough for it,
    every word of it becomes one token (bench/table2.py's reader uses the synthetic scenes' words)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: PLC0415
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS + list(corpus or []), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    if chat_template is not None:
        fast.chat_template = chat_template
    if directory is not None:
        fast.save_pretrained(str(directory))
    return fast


def make_tiny_llm(directory, seed: int = 0, chat_template: str | None = None, corpus: list[str] | None = None,
                  vocab_size: int = 400, **overrides) -> str:
    """A random ``LlamaForCausalLM`` (width 64, 2 layers; ``overrides`` are ``LlamaConfig`` fields) and
    its tokenizer (:func:`make_tiny_tokenizer` with ``chat_template``, ``corpus``, ``vocab_size``)
    saved to ``directory``."""
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415

    directory = str(directory)
    tok = make_tiny_tokenizer(directory, vocab_size=vocab_size, chat_template=chat_template, corpus=corpus)
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, **{**TINY_LLAMA, **overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(directory)
    return directory


def make_tiny_slotvlm(directory, seed: int = 0, **cfg) -> str:
    """Tiny CLIP (``directory/clip``) + tiny LLaMA (``directory/llm``) + a fresh connector saved to
    ``directory/model`` with :meth:`SlotVLM.save_pretrained`; ``cfg`` overrides config fields.
    Base models already present in ``directory`` are reused. Returns the model directory."""
    from .model import SlotVLM, SlotVLMConfig  # noqa: PLC0415

    directory = str(directory)
    clip, llm = os.path.join(directory, "clip"), os.path.join(directory, "llm")
    if not os.path.isfile(os.path.join(clip, "config.json")):
        make_tiny_clip(clip, seed=seed)
    if not os.path.isfile(os.path.join(llm, "config.json")):
        make_tiny_llm(llm, seed=seed)
    out = os.path.join(directory, cfg.pop("name", "model"))
    config = SlotVLMConfig(vision_model=clip, llm_model=llm, **{**TINY_CONNECTOR, **cfg})
    SlotVLM.from_config(config, device="cpu", dtype=torch.float32, seed=seed).save_pretrained(out)
    return out


def make_tiny_bundle(out, seed: int = 0, chat_template: str | None = TINY_CHAT_TEMPLATE, **cfg) -> str:
    """What ``slotvlm init --tiny OUT`` writes: one self-contained folder ``OUT`` holding a tiny
    random CLIP (``OUT/clip``), a tiny random LLaMA with its tokenizer and chat template
    (``OUT/llm``) and a fresh connector (``TINY_CONNECTOR`` sizes, overridden by ``cfg``) saved with
    :meth:`SlotVLM.save_pretrained` — the config refers to ``./clip`` and ``./llm``, so the folder
    can be moved, copied or pushed to the hub as a whole. Random weights: for trying the pipeline
    offline, not for answers. Returns ``OUT``."""
    from .model import SlotVLM, SlotVLMConfig  # noqa: PLC0415

    out = str(out)
    clip, llm = os.path.join(out, "clip"), os.path.join(out, "llm")
    make_tiny_clip(clip, seed=seed)
    make_tiny_llm(llm, seed=seed, chat_template=chat_template)
    extra = {"license": "apache-2.0", **cfg.pop("extra", {})}
    config = SlotVLMConfig(vision_model=clip, llm_model=llm, extra=extra, **{**TINY_CONNECTOR, **cfg})
    SlotVLM.from_config(config, device="cpu", dtype=torch.float32, seed=seed).save_pretrained(out)
    return out


def clip_frames(seconds: float, fps: float, size: int = 64) -> np.ndarray:
    """Synthetic RGB frames ``uint8 [round(seconds·fps), size, size, 3]``: a red square moving
    right and a blue disc moving down over a slowly changing green background."""
    n = max(1, int(round(seconds * fps)))
    yy, xx = np.mgrid[0:size, 0:size]
    frames = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        p = i / max(1, n - 1)
        f = np.zeros((size, size, 3), dtype=np.uint8)
        f[..., 1] = int(60 + 120 * p)
        x0, y0 = int(p * (size - size // 4)), size // 8
        f[y0 : y0 + size // 4, x0 : x0 + size // 4] = (220, 30, 30)
        cy, cx = int(size // 4 + p * size // 2), int(size * 0.7)
        f[(yy - cy) ** 2 + (xx - cx) ** 2 < (size // 8) ** 2] = (30, 30, 220)
        frames[i] = f
    return frames


def make_clip(path, seconds: float = 4.0, fps: float = 2.0, size: int = 64) -> str:
    """Write an mp4 (H.264 when available, else MPEG-4 Part 2) of :func:`clip_frames` with PyAV."""
    import av  # noqa: PLC0415
    from fractions import Fraction  # noqa: PLC0415

    path = str(path)
    frames = clip_frames(seconds, fps, size)
    rate = Fraction(fps).limit_denominator(1000)
    with av.open(path, mode="w") as container:
        try:
            stream = container.add_stream("libx264", rate=rate)
        except (av.FFmpegError, ValueError, KeyError):
            stream = container.add_stream("mpeg4", rate=rate)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
