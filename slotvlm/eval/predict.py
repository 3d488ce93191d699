"""Zero-shot predictions of a Slot-VLM on an open-ended video QA set.

One JSON line per answered question, ``{"question_id", "video", "question", "answer", "pred"}``,
appended and flushed as soon as its batch is generated, so a killed run loses at most one batch
and a rerun skips every question already answered. Questions that cannot be answered (video
missing or undecodable, features missing, out of memory) go to ``<out>.failures.jsonl`` with the
reason; the run carries on and a rerun tries them again.

Sharding (``torchrun --nproc_per_node=N -m slotvlm predict ...``): the videos of the QA set, in
order of first appearance, are dealt round-robin to the ranks (all questions of a video stay on
one rank, so each video is decoded once). Rank ``r`` appends to ``<out>.rank{r}`` (failures to
``<out>.rank{r}.failures.jsonl``); after a barrier rank 0 merges everything into ``<out>`` in the
QA file's order, with the failures still unanswered in ``<out>.failures.jsonl``, and removes the
shard files. The split is a function of the QA file and the world size only, so any rank can be
rerun (or the merge redone by a single-process rerun, which also reads leftover shard files).
"""
from __future__ import annotations

import glob
import json
import os
import time
from typing import Sequence

import torch

from ._jsonl import JsonlAppender, read_jsonl
from .data import QAItem, VideoIndex, load_qa

FIELDS = ("question_id", "video", "question", "answer", "pred")


def failures_path(out: str) -> str:
    """Where the failures of the predictions file ``out`` are written."""
    return f"{out}.failures.jsonl"


def shard_path(out: str, rank: int) -> str:
    return f"{out}.rank{rank}"


def _shard_files(out: str) -> list[str]:
    return sorted(p for p in glob.glob(glob.escape(out) + ".rank*") if not p.endswith(".failures.jsonl"))


def answered_ids(out: str) -> set[str]:
    """Question ids already answered in ``out`` or in any shard file beside it."""
    ids = set()
    for path in [out, *_shard_files(out)]:
        ids.update(str(r["question_id"]) for r in read_jsonl(path) if "question_id" in r)
    return ids


def shard_of(items: Sequence[QAItem], world_size: int) -> dict[str, int]:
    """question_id → rank: videos dealt round-robin in order of first appearance."""
    video_rank: dict[str, int] = {}
    for it in items:
        if it.video not in video_rank:
            video_rank[it.video] = len(video_rank) % world_size
    return {it.question_id: video_rank[it.video] for it in items}


class _Inputs:
    """Per-video model inputs from video files or a feature cache, with the reason on failure."""

    def __init__(self, model, videos: str | None, features: str | None, max_frames: int | None):
        if videos is None and features is None:
            raise ValueError("give videos (a folder of video files) or features (a feature cache folder)")
        self.model = model
        self.max_frames = max_frames
        self.index = VideoIndex(videos) if videos is not None else None
        self.cache = None
        if features is not None:
            from ..data.features import FeatureCache  # noqa: PLC0415  (the cache of `slotvlm extract`)

            self.cache = FeatureCache(features)

    def load(self, video: str):
        """Pixel values ``[T, 3, S, S]`` or a feature dict with ``slow`` / ``fast``."""
        if self.cache is not None:
            if video not in self.cache:
                raise LookupError(f"video {video!r} is not in the feature cache {self.cache.directory!r}")
            feats = self.cache.load(video)
            return {"slow": feats["slow"].float(), "fast": feats["fast"].float()}
        path = self.index.find(video)
        if path is None:
            raise LookupError(f"video {video!r} not found under {str(self.index.root)!r}")
        return self.model.load_video(path, max_frames=self.max_frames)

    def load_many(self, videos: list[str], workers: int) -> list:
        """:meth:`load` of several videos, decoded concurrently (``slotvlm.video.load_videos``);
        a failing video's entry is its exception."""
        if self.cache is not None or workers <= 1 or len(videos) <= 1:
            out = []
            for v in videos:
                try:
                    out.append(self.load(v))
                except Exception as e:  # noqa: BLE001
                    out.append(e)
            return out
        from ..video import load_videos  # noqa: PLC0415

        paths = [self.index.find(v) for v in videos]
        found = [p for p in paths if p is not None]
        cfg = self.model.config
        decoded = iter(load_videos(found, fps=cfg.fps, max_frames=self.max_frames or cfg.max_frames,
                                   size=cfg.image_size, workers=workers, return_exceptions=True))
        return [next(decoded) if p is not None else
                LookupError(f"video {v!r} not found under {str(self.index.root)!r}") for v, p in zip(videos, paths)]

    def encode(self, loaded: list) -> torch.Tensor:
        """``[n, L, H]`` video embeddings for n loaded videos."""
        if self.cache is not None:
            return self.model.encode_features(
                slow=torch.stack([x["slow"] for x in loaded]), fast=[x["fast"] for x in loaded]
            )
        return self.model.encode_video(loaded)


def predict(
    model,
    items: Sequence[QAItem],
    out: str,
    *,
    videos: str | None = None,
    features: str | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    max_frames: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    load_workers: int = 2,
) -> dict:
    """Answer this rank's unanswered questions with ``model`` (a :class:`slotvlm.SlotVLM`).

    Args:
        items: the QA set (:func:`slotvlm.eval.data.load_qa`).
        out: the predictions file; with ``world_size > 1`` this rank writes ``<out>.rank{rank}``
            (merge with :func:`merge_shards` once every rank is done).
        videos / features: a folder of video files, or a feature cache of ``slotvlm extract``.
        batch_size: questions per generate call (their distinct videos are encoded together).
        max_new_tokens: answer length limit. Decoding is greedy (deterministic).
        load_workers: the videos of a batch are decoded this many at a time, in threads.

    Returns ``{"answered", "skipped", "failed", "total"}`` for this rank.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    for name, v in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens), ("load_workers", load_workers)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not (isinstance(world_size, int) and world_size >= 1 and 0 <= rank < world_size):
        raise ValueError(f"rank must be in [0, world_size={world_size!r}), got {rank!r}")
    inputs = _Inputs(model, videos, features, max_frames)
    owner = shard_of(items, world_size)
    mine = [it for it in items if owner[it.question_id] == rank]
    done = answered_ids(out)
    todo = [it for it in mine if it.question_id not in done]
    # Questions of one video next to each other (stable: file order within a video).
    first = {}
    for i, it in enumerate(todo):
        first.setdefault(it.video, i)
    todo.sort(key=lambda it: first[it.video])

    target = out if world_size == 1 else shard_path(out, rank)
    writer = JsonlAppender(target)
    failures = JsonlAppender(failures_path(target), truncate=True)  # old failures are retried now
    stats = {"answered": 0, "skipped": len(mine) - len(todo), "failed": 0, "total": len(mine)}
    bad_videos: dict[str, str] = {}
    carry: dict[str, torch.Tensor] = {}  # the last video's embedding, reused by the next batch

    def fail(batch: list[QAItem], reason: str) -> None:
        for it in batch:
            failures.write({"question_id": it.question_id, "video": it.video, "error": reason,
                            "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        stats["failed"] += len(batch)

    model.eval()
    desc = "predict" if world_size == 1 else f"predict[rank {rank}]"
    bar = tqdm(total=len(todo), desc=desc, unit="q", disable=not progress)
    try:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            embeds = {v: e for v, e in carry.items() if any(it.video == v for it in batch)}
            loaded: dict[str, object] = {}
            need = list(dict.fromkeys(it.video for it in batch if it.video not in embeds and it.video not in bad_videos))
            # missing, corrupt, unreadable: recorded, the run goes on
            for v, res in zip(need, inputs.load_many(need, load_workers)):
                if isinstance(res, Exception):
                    bad_videos[v] = f"{type(res).__name__}: {res}"
                else:
                    loaded[v] = res
            ok = [it for it in batch if it.video not in bad_videos]
            for v in {it.video for it in batch if it.video in bad_videos}:
                fail([it for it in batch if it.video == v], bad_videos[v])
            if ok:
                try:
                    with torch.inference_mode():
                        if loaded:
                            names = list(loaded)
                            enc = inputs.encode([loaded[n] for n in names])
                            embeds.update(zip(names, enc.unbind(0)))
                        preds = model.generate(
                            torch.stack([embeds[it.video] for it in ok]),
                            [it.question for it in ok],
                            max_new_tokens=max_new_tokens,
                            do_sample=False,
                        )
                except RuntimeError as e:  # out of memory, device errors: record and carry on
                    fail(ok, f"{type(e).__name__}: {e}")
                else:
                    for it, p in zip(ok, preds):
                        writer.write({"question_id": it.question_id, "video": it.video,
                                      "question": it.question, "answer": it.answer, "pred": p})
                    stats["answered"] += len(ok)
            last = batch[-1].video
            carry = {last: embeds[last]} if last in embeds else {}
            bar.update(len(batch))
            bar.set_postfix(failed=stats["failed"])
    finally:
        bar.close()
        writer.close()
        failures.close()
    return stats


def merge_shards(out: str, items: Sequence[QAItem] | None = None) -> dict:
    """Fold ``<out>.rank*`` shard files into ``out`` (ordered as ``items`` when given; ids not in
    ``items`` are kept after them) and their failures into ``<out>.failures.jsonl`` (only those
    still unanswered; no file when there are none). Written atomically; the shard files are removed afterwards. Also tidies a
    single-process ``out`` (order, torn last line). Returns ``{"answered", "failed"}``."""
    rows: dict[str, dict] = {}
    shards = _shard_files(out)
    for path in [out, *shards]:
        for r in read_jsonl(path):
            rows.setdefault(str(r["question_id"]), r)
    fails: dict[str, dict] = {}
    for path in [failures_path(out), *(failures_path(s) for s in shards)]:
        for r in read_jsonl(path):
            qid = str(r.get("question_id"))
            if qid not in rows:
                fails[qid] = r
    order = [it.question_id for it in items] if items is not None else []
    pos = {q: i for i, q in enumerate(order)}
    ordered = sorted(rows.values(), key=lambda r: pos.get(str(r["question_id"]), len(pos)))
    _write_jsonl_atomic(out, ordered)
    fail_order = sorted(fails.values(), key=lambda r: pos.get(str(r.get("question_id")), len(pos)))
    if fail_order:
        _write_jsonl_atomic(failures_path(out), fail_order)
    elif os.path.exists(failures_path(out)):
        os.remove(failures_path(out))  # no file = no failures
    for s in shards:
        for p in (s, failures_path(s)):
            if os.path.exists(p):
                os.remove(p)
    return {"answered": len(rows), "failed": len(fails)}


def _write_jsonl_atomic(path: str, rows: list[dict]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def run_predict(
    model_dir: str,
    qa: str,
    out: str,
    *,
    videos: str | None = None,
    features: str | None = None,
    device=None,
    dtype=None,
    backend: str | None = None,
    rank: int = 0,
    world_size: int = 1,
    barrier=None,
    **kw,
) -> dict:
    """Load the model and the QA set, :func:`predict` this rank's share, then (after ``barrier``,
    on rank 0) :func:`merge_shards`. Returns this rank's stats plus ``merged`` on rank 0."""
    from ..model import SlotVLM  # noqa: PLC0415

    items = load_qa(qa)
    if videos is None and features is None:
        raise ValueError("give videos (a folder of video files) or features (a feature cache folder)")
    model = SlotVLM.from_pretrained(model_dir, device=device, dtype=dtype, backend=backend)
    stats = predict(model, items, out, videos=videos, features=features, rank=rank,
                    world_size=world_size, **kw)
    if barrier is not None:
        barrier()
    if rank == 0:
        stats["merged"] = merge_shards(out, items)
    return stats
