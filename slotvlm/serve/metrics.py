"""The server's Prometheus metrics (``GET /metrics``), one registry per app.

| metric | type | what |
|---|---|---|
| ``slotvlm_requests_total{path,code}`` | counter | HTTP requests answered, by route and status code |
| ``slotvlm_request_latency_seconds{stream}`` | histogram | chat-completion latency, request in → last byte out |
| ``slotvlm_time_to_first_token_seconds`` | histogram | request in → first answer text |
| ``slotvlm_queue_depth`` | gauge | admitted requests waiting for a batch |
| ``slotvlm_requests_in_flight`` | gauge | admitted requests not finished (bounded by ``--max-queue``) |
| ``slotvlm_requests_rejected_total{reason}`` | counter | refused before work: ``queue_full`` (429), ``auth`` (401), ``too_large`` (413) |
| ``slotvlm_requests_cancelled_total`` | counter | requests whose client went away before the answer was done |
| ``slotvlm_batch_size`` | histogram | requests per generation batch |
| ``slotvlm_video_cache_hits_total`` / ``_misses_total`` | counter | video-token cache lookups |
| ``slotvlm_video_cache_hit_ratio`` | gauge | hits / (hits + misses) since start |
| ``slotvlm_video_cache_bytes`` / ``_entries`` | gauge | what the cache holds now |
| ``slotvlm_prompt_tokens_total`` / ``_completion_tokens_total`` / ``_video_tokens_total`` | counter | token counts |
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the app)
from prometheus_client import disable_created_metrics

disable_created_metrics()  # no `*_created` series: they double the text and nobody scrapes them here

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("slotvlm_requests", "HTTP requests answered", ["path", "code"], registry=r)
        self.latency = Histogram("slotvlm_request_latency_seconds", "chat-completion latency", ["stream"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("slotvlm_time_to_first_token_seconds", "time to the first answer text",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("slotvlm_queue_depth", "admitted requests waiting for a batch", registry=r)
        self.in_flight = Gauge("slotvlm_requests_in_flight", "admitted requests not finished", registry=r)
        self.rejected = Counter("slotvlm_requests_rejected", "requests refused before any work", ["reason"],
                                registry=r)
        self.cancelled = Counter("slotvlm_requests_cancelled", "requests cancelled by a client disconnect",
                                 registry=r)
        self.batch_size = Histogram("slotvlm_batch_size", "requests per generation batch", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.cache_hits = Counter("slotvlm_video_cache_hits", "video-token cache hits", registry=r)
        self.cache_misses = Counter("slotvlm_video_cache_misses", "video-token cache misses", registry=r)
        self.cache_hit_ratio = Gauge("slotvlm_video_cache_hit_ratio", "video-token cache hits / lookups", registry=r)
        self.cache_bytes = Gauge("slotvlm_video_cache_bytes", "bytes of video tokens held", registry=r)
        self.cache_entries = Gauge("slotvlm_video_cache_entries", "videos held", registry=r)
        self.prompt_tokens = Counter("slotvlm_prompt_tokens", "prompt tokens (incl. video tokens)", registry=r)
        self.completion_tokens = Counter("slotvlm_completion_tokens", "generated tokens", registry=r)
        self.video_tokens = Counter("slotvlm_video_tokens", "video tokens in prompts", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
