"""The model card (``README.md``) that :meth:`SlotVLM.save_pretrained` writes next to the weights.

YAML front matter through ``huggingface_hub.ModelCardData`` (``base_model`` lists the base models
given by hub id; local folders are named in the body only), then a body with what the model is,
the base models, the token budget, the training stages and data, and how to load it.
"""
from __future__ import annotations

import os

from .config import SlotVLMConfig, looks_local

TAGS = ["slotvlm", "slot-attention", "video-question-answering", "video-text-to-text"]


def _is_hub_id(ref: str | None) -> bool:
    return bool(ref) and not os.path.exists(ref) and not looks_local(ref)


def _shown(ref: str, folder: str | None) -> str:
    if _is_hub_id(ref):
        return f"[`{ref}`](https://huggingface.co/{ref})"
    if folder is not None:
        rel = os.path.relpath(os.path.abspath(ref), os.path.abspath(folder)).replace(os.sep, "/")
        return f"`{rel if rel.startswith('..') else './' + rel}` (local folder, relative to this one)"
    return f"`{ref}` (local folder)"


def token_budget(cfg: SlotVLMConfig) -> list[tuple[str, str, int]]:
    """``[(part, how, tokens)]`` of the video tokens handed to the LLM."""
    grid = cfg.grid_size or 16
    if cfg.connector == "pooling":
        return [("spatial", f"{grid}×{grid} per-position means over time", grid * grid),
                ("temporal", f"per-frame means interpolated to {cfg.pooling_num_frames}", cfg.pooling_num_frames)]
    rows = []
    if cfg.use_slow:
        rows.append(("object (slow) branch", f"{cfg.num_slow_frames} frames × {cfg.num_slots_slow} slots",
                     cfg.num_slow_frames * cfg.num_slots_slow))
    if cfg.use_fast:
        g = grid // cfg.pool_stride
        rows.append(("event (fast) branch", f"{g}×{g} positions × {cfg.num_slots_fast} slots",
                     g * g * cfg.num_slots_fast))
    return rows


def render_model_card(cfg: SlotVLMConfig, *, trainable_params: int, license: str | None = None,
                      folder: str | None = None, repo_id: str | None = None) -> str:
    """The card's markdown text, YAML front matter first."""
    from huggingface_hub import ModelCardData  # noqa: PLC0415

    refs = {"vision": cfg.vision_model, "llm": cfg.llm_model, "tokenizer": cfg.tokenizer}
    base = [r for k, r in refs.items() if k != "tokenizer" and _is_hub_id(r)]
    license = license or cfg.extra.get("license") or "other"
    data = ModelCardData(license=license, library_name="slotvlm", pipeline_tag="video-text-to-text",
                         tags=list(TAGS), base_model=base or None)
    name = repo_id or (os.path.basename(os.path.abspath(folder)) if folder else "slotvlm")
    where = repo_id or "PATH/TO/THIS/FOLDER"
    kind = {"slowfast": "SlowFast Slots (Slot-VLM)", "pooling": "spatial + temporal pooling (Video-ChatGPT baseline)",
            "qformer": "Q-Former (learned queries, baseline)"}[cfg.connector]
    lines = [f"# {name}", ""]
    lines += [f"A Slot-VLM video-language model: frozen CLIP vision tower → trainable **{kind}** connector → "
              "frozen causal LLM that answers questions about a video. Only the connector's weights are "
              "stored here (`connector.safetensors`); the base models are referenced by `config.json`.", ""]
    if not cfg.training:
        lines += ["**Untrained connector**: its weights are freshly initialised (random), so the answers say "
                  "nothing about the video until it is trained (`slotvlm train`).", ""]
    lines += ["## Base models", "", "| role | model |", "|---|---|"]
    lines += [f"| vision (frozen, hidden state {cfg.vision_layer}) | {_shown(cfg.vision_model, folder)} |",
              f"| language model (frozen) | {_shown(cfg.llm_model, folder)} |",
              f"| tokenizer | {_shown(cfg.tokenizer, folder) if cfg.tokenizer else 'the language model’s'} |", ""]
    budget = token_budget(cfg)
    lines += ["## Token budget", "", "| part | layout | tokens |", "|---|---|---|"]
    lines += [f"| {part} | {how} | {n} |" for part, how, n in budget]
    lines += [f"| **total** | handed to the LLM per video | **{sum(n for *_, n in budget)}** |", ""]
    lines += [f"Video input: {cfg.fps:g} frame(s) per second, {cfg.image_size}×{cfg.image_size} px, at most "
              f"{cfg.max_frames} frames. Connector: slot width {cfg.slot_dim}, {cfg.slot_iters} iterations, "
              f"event encoder `{cfg.event_encoder}`, {trainable_params:,} trainable parameters. Prompt template: "
              f"`{cfg.conv_template}` (the tokenizer's chat template when it has one, else Vicuna v1).", ""]
    lines += ["## Training", ""]
    if cfg.training:
        lines += ["| # | stage | branch | data | steps / epochs | lr | batch |", "|---|---|---|---|---|---|---|"]
        for i, r in enumerate(cfg.training, 1):
            steps = r.get("max_steps") or (f"{r['epochs']} epochs" if r.get("epochs") is not None else "")
            src = r.get("data") or r.get("features") or ""
            lines.append(f"| {i} | {r.get('stage', '')} | {r.get('branch') or 'both'} | `{os.path.basename(str(src))}` "
                         f"| {steps} | {r.get('lr', '')} | {r.get('batch_size', '')} |")
        lines += ["", "Stage 1 pre-trains the slots by reconstructing CLIP features; stage 2 instruction-tunes one "
                  "branch and the projection; stage 3 tunes both branches. CLIP and the LLM stay frozen.", ""]
    else:
        lines += ["None recorded.", ""]
    lines += ["## How to load", "", "```python", "from slotvlm import SlotVLM", "",
              f'model = SlotVLM.from_pretrained("{where}").eval()   # or transformers.AutoModel '
              "after `import slotvlm`",
              'print(model.answer("clip.mp4", "What is happening in the video?"))', "```", "",
              "```bash", "pip install slotvlm", f'slotvlm chat --model {where} --video clip.mp4',
              f"slotvlm visualize --model {where} --video clip.mp4 --out slots.png", "```", ""]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)
