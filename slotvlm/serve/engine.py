"""The serving engine: a video-token cache, a bounded request queue and one batching worker.

Flow of one request (the FastAPI handlers in :mod:`slotvlm.serve.app` drive it)::

    engine.admit()                      # or QueueFull → 429 (bounded: --max-queue in flight)
    video = engine.prepare(media)       # cache hit: the video tokens; miss: decoded frames
    engine.submit(job)                  # the worker batches waiting jobs (up to --max-batch)

The worker thread owns the model. For each batch it runs CLIP + the connector once on all the
batch's uncached videos together (different lengths go through the connector's varlen path), puts
their tokens in the cache, then decodes all rows together (:func:`slotvlm.serve.generation.decode`,
prompts left-padded). Jobs whose client went away are dropped before and during decoding.
"""
from __future__ import annotations

import logging
import os
import queue
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import torch

from .generation import GenRequest, GenResult, decode
from .media import Media, MediaError
from .metrics import Metrics

log = logging.getLogger("slotvlm.serve")

__all__ = ["VideoCache", "Engine", "Job", "QueueFull", "PreparedVideo"]


class QueueFull(Exception):
    """The engine already holds ``max_queue`` requests; ``retry_after`` is a hint in seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"the server is busy (request queue full); retry after {retry_after} s")
        self.retry_after = retry_after


class VideoCache:
    """An LRU map ``key → video tokens [L, H]`` bounded by the tokens' bytes. Thread-safe."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _size(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    def get(self, key: str, count: bool = True) -> torch.Tensor | None:
        """The tokens for ``key`` (now most recently used) or None; ``count``: add to hits/misses."""
        with self._lock:
            t = self._items.get(key)
            if t is None:
                self.misses += count
                return None
            self._items.move_to_end(key)
            self.hits += count
            return t

    def record(self, hit: bool) -> None:
        """Count a lookup made with ``get(..., count=False)``."""
        with self._lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1

    def put(self, key: str, tokens: torch.Tensor) -> None:
        size = self._size(tokens)
        with self._lock:
            if key in self._items:
                self.bytes -= self._size(self._items.pop(key))
            if size > self.max_bytes:
                return
            self._items[key] = tokens
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.bytes -= self._size(old)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def hit_ratio(self) -> float:
        n = self.hits + self.misses
        return self.hits / n if n else 0.0


@dataclass
class _Pending:
    """A video being decoded by one request, waited for by others with the same content."""

    done: threading.Event = field(default_factory=threading.Event)
    pixels: torch.Tensor | None = None
    error: BaseException | None = None


@dataclass
class PreparedVideo:
    """A request's video: its cache ``key`` and either ``tokens [L, H]`` (hit) or ``pixels [T, 3, S, S]``."""

    key: str
    tokens: torch.Tensor | None = None
    pixels: torch.Tensor | None = None

    @property
    def hit(self) -> bool:
        return self.tokens is not None


@dataclass
class Job:
    """One chat completion in the engine. ``on_text(delta)``, ``on_done(GenResult)`` and
    ``on_error(exc)`` are called from the worker thread."""

    video: PreparedVideo
    question: str
    history: list[tuple[str, str]]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    on_text: Callable[[str], None]
    on_done: Callable[[GenResult], None]
    on_error: Callable[[BaseException], None]
    cancel: threading.Event = field(default_factory=threading.Event)
    t_start: float = field(default_factory=time.perf_counter)
    system: str | None = None
    t_first: float | None = None


class Engine:
    """Owns the model and the worker thread. ``start()`` / ``stop()`` bracket its life."""

    def __init__(self, model, *, max_batch: int = 8, max_queue: int = 64, batch_wait_ms: float = 5.0,
                 video_cache_mb: float = 256.0, metrics: Metrics | None = None):
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be >= 1, got {max_batch} and {max_queue}")
        self.model = model
        self.max_batch = int(max_batch)
        self.max_queue = int(max_queue)
        self.batch_wait_s = float(batch_wait_ms) / 1e3
        self.cache = VideoCache(int(video_cache_mb * 2**20))
        self.metrics = metrics or Metrics()
        self.metrics.cache_hit_ratio.set_function(lambda: self.cache.hit_ratio)
        self.metrics.cache_bytes.set_function(lambda: self.cache.bytes)
        self.metrics.cache_entries.set_function(lambda: len(self.cache))
        self._queue: queue.Queue[Job] = queue.Queue()
        self._in_flight = 0
        self._decoding: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._latency_ema = 1.0
        cfg = model.config
        self.settings = f"fps={cfg.fps},max_frames={cfg.max_frames},size={cfg.image_size}"

    # ---------------------------------------------------------------- admission
    def admit(self) -> None:
        """Reserve a place for one request, or raise :class:`QueueFull`."""
        with self._lock:
            if self._in_flight >= self.max_queue:
                self.metrics.rejected.labels("queue_full").inc()
                raise QueueFull(max(1, round(self._latency_ema)))
            self._in_flight += 1
            self.metrics.in_flight.set(self._in_flight)

    def release(self) -> None:
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            self.metrics.in_flight.set(self._in_flight)

    # ---------------------------------------------------------------- video
    def cache_key(self, media: Media) -> str:
        """Content hash + the model's frame-sampling settings."""
        return f"{media.sha256}|{self.settings}"

    def prepare(self, media: Media) -> PreparedVideo:
        """Look the video up in the cache; on a miss decode and pre-process it (CPU, any thread).

        A hit is a request that neither decodes nor encodes its video itself: its tokens are in the
        cache, or another request is already decoding the same content (concurrent questions about
        one new video decode it once and share the frames; the worker encodes it once).
        Raises :class:`MediaError` (400) for a file that is not a decodable video."""
        key = self.cache_key(media)
        with self._lock:
            tokens = self.cache.get(key, count=False)
            pending = None if tokens is not None else self._decoding.get(key)
            owner = tokens is None and pending is None
            if owner:
                pending = self._decoding[key] = _Pending()
        self.cache.record(hit=not owner)
        (self.metrics.cache_misses if owner else self.metrics.cache_hits).inc()
        if tokens is not None:
            return PreparedVideo(key, tokens=tokens)
        if not owner:
            pending.done.wait()
            if pending.error is not None:
                raise pending.error
            return PreparedVideo(key, pixels=pending.pixels)
        try:
            pending.pixels = self._decode(media)
        except BaseException as exc:
            pending.error = exc
            with self._lock:
                self._decoding.pop(key, None)
            raise
        finally:
            pending.done.set()
        return PreparedVideo(key, pixels=pending.pixels)

    def _forget_decoding(self, jobs: list[Job]) -> None:
        with self._lock:
            for job in jobs:
                self._decoding.pop(job.video.key, None)

    def _decode(self, media: Media) -> torch.Tensor:
        from ..video import VideoError  # noqa: PLC0415

        tmp = None
        try:
            path = media.path
            if path is None:
                fd, tmp = tempfile.mkstemp(prefix="slotvlm-serve-", suffix=".video")
                with os.fdopen(fd, "wb") as f:
                    f.write(media.data)
                path = tmp
            try:
                return self.model.load_video(path)
            except (VideoError, ValueError, OSError) as exc:
                msg = str(exc).replace(path, "the video")
                raise MediaError(f"video_url: not a decodable video: {msg}") from None
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    # ---------------------------------------------------------------- queue
    def submit(self, job: Job) -> None:
        self._queue.put(job)
        self.metrics.queue_depth.set(self._queue.qsize())

    def start(self) -> "Engine":
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="slotvlm-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _next_batch(self) -> list[Job]:
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.perf_counter() + self.batch_wait_s
        while len(batch) < self.max_batch:
            left = deadline - time.perf_counter()
            try:
                batch.append(self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        self.metrics.queue_depth.set(self._queue.qsize())
        return batch

    def _loop(self) -> None:
        while not self._stop.is_set():
            batch = self._next_batch()
            if not batch:
                continue
            live = []
            for job in batch:
                if job.cancel.is_set():
                    self._finish_cancelled(job)
                else:
                    live.append(job)
            try:
                if live:
                    self._run(live)
            except Exception as exc:  # keep serving: the batch fails, the worker lives
                log.exception("batch of %d failed", len(live))
                for job in live:
                    self._end(job)
                    job.on_error(exc)
            finally:
                self._forget_decoding(batch)  # encoded (now cached) or given up

    def _finish_cancelled(self, job: Job) -> None:
        self.metrics.cancelled.inc()
        self._end(job)
        job.on_done(GenResult("", "cancelled", 0, 0, 0))

    def _end(self, job: Job) -> None:
        self.release()
        self._latency_ema = 0.8 * self._latency_ema + 0.2 * (time.perf_counter() - job.t_start)

    @torch.no_grad()
    def _run(self, jobs: list[Job]) -> None:
        # 1. video tokens: all uncached videos of the batch through CLIP + connector together
        missing: dict[str, torch.Tensor] = {}
        for job in jobs:
            if not job.video.hit and job.video.key not in missing:
                cached = self.cache.get(job.video.key, count=False)  # filled by an earlier batch meanwhile?
                if cached is not None:
                    job.video.tokens = cached
                else:
                    missing[job.video.key] = job.video.pixels
        if missing:
            encoded = self.model.encode_video(list(missing.values()))  # [n, L, H]
            for key, tokens in zip(missing, encoded):
                tokens = tokens.detach().clone()
                self.cache.put(key, tokens)
                missing[key] = tokens
        for job in jobs:
            if job.video.tokens is None:
                job.video.tokens = missing[job.video.key]
            job.video.pixels = None
        # 2. one decoding batch
        self.metrics.batch_size.observe(len(jobs))

        def text_cb(job):
            def cb(delta: str) -> None:
                if job.t_first is None:
                    job.t_first = time.perf_counter()
                    self.metrics.ttft.observe(job.t_first - job.t_start)
                job.on_text(delta)
            return cb

        reqs = [GenRequest(job.video.tokens, job.question, job.history, job.max_tokens, job.temperature,
                           job.top_p, job.seed, job.stop, on_text=text_cb(job), cancelled=job.cancel.is_set,
                           system=job.system)
                for job in jobs]
        results = decode(self.model, reqs)
        for job, res in zip(jobs, results):
            if res.finish_reason == "cancelled":
                self.metrics.cancelled.inc()
            else:
                self.metrics.prompt_tokens.inc(res.prompt_tokens)
                self.metrics.completion_tokens.inc(res.completion_tokens)
                self.metrics.video_tokens.inc(res.video_tokens)
            self._end(job)
            job.on_done(res)
