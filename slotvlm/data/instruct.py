"""Instruction data over the feature cache, and batching of cached features.

``load_instructions`` reads Video-ChatGPT's VideoInstruct-100K (``[{"video_id", "q", "a"}]``) and the
common QA repackagings (``[{"video_id"|"video_name", "question", "answer"}]``), strips the
``QA_GT_caption_based_noisy`` marker, and keeps the pairs whose video is in the cache.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from .features import FeatureCache

NOISY_MARKER = "QA_GT_caption_based_noisy"


def clean_answer(text: str) -> str:
    """Remove the ``QA_GT_caption_based_noisy`` marker (and the whitespace it leaves)."""
    return " ".join(str(text).replace(NOISY_MARKER, " ").split())


@dataclass(frozen=True)
class Example:
    video_id: str  # the cache key of the video
    question: str
    answer: str


def load_instructions(path: str, cache: FeatureCache | None = None) -> tuple[list[Example], dict]:
    """Read an instruction/QA json file. Returns ``(examples, stats)``; with ``cache``, examples whose
    video has no features are dropped and counted in ``stats["missing_video"]``."""
    if not os.path.isfile(path):
        raise ValueError(f"data must be a JSON file of instructions, got {path!r} (not found)")
    with open(path, encoding="utf-8") as f:
        try:
            records = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"data file {path!r} is not valid JSON: {exc}") from exc
    if not isinstance(records, list):
        raise ValueError(f"data file {path!r} must hold a JSON list of records, got {type(records).__name__}")
    out, stats = [], {"records": len(records), "missing_video": 0, "bad_record": 0, "marker_stripped": 0}
    for r in records:
        vid = r.get("video_id", r.get("video_name")) if isinstance(r, dict) else None
        q = r.get("q", r.get("question")) if isinstance(r, dict) else None
        a = r.get("a", r.get("answer")) if isinstance(r, dict) else None
        if vid is None or q is None or a is None:
            stats["bad_record"] += 1
            continue
        if NOISY_MARKER in str(a):
            stats["marker_stripped"] += 1
        a = clean_answer(a)
        key = str(vid)
        if cache is not None:
            key = cache.resolve(key)
            if key is None:
                stats["missing_video"] += 1
                continue
        out.append(Example(key, str(q).strip(), a))
    return out, stats


def collate_features(items: list[dict], device="cpu") -> dict:
    """Cached feature dicts → ``{"slow": [B, t_d, G, G, D] float32, "fast": list of [T_i, g, g, D] float32}``."""
    slow = torch.stack([it["slow"] for it in items]).to(device=device, dtype=torch.float32)
    fast = [it["fast"].to(device=device, dtype=torch.float32) for it in items]
    return {"slow": slow, "fast": fast}
