"""The OpenAI-compatible HTTP API (FastAPI): ``GET /v1/models``, ``POST /v1/chat/completions``,
``GET /metrics`` (Prometheus text), ``GET /health``.

A chat completion's messages alternate ``user`` / ``assistant`` and end with ``user``; exactly one
user message holds a ``{"type": "video_url", "video_url": {"url": ...}}`` part (the video goes
into that turn of the model's chat template), the others text. Sampling: ``max_tokens`` (or
``max_completion_tokens``), ``temperature`` (0 = greedy; OpenAI's default 1), ``top_p``, ``seed``,
``stop``; ``stream: true`` answers with server-sent ``chat.completion.chunk`` events, a last chunk
with ``usage`` and ``data: [DONE]``. Errors are ``{"error": {"message", "type", "code"}}`` with
no traceback.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..conversation import VIDEO_TOKEN
from .engine import Engine, Job, QueueFull
from .media import MediaError, MediaPolicy, fetch_media
from .metrics import CONTENT_TYPE_LATEST, Metrics

log = logging.getLogger("slotvlm.serve")

__all__ = ["ServeConfig", "create_app"]

ROUTES = ("/v1/models", "/v1/chat/completions", "/metrics", "/health")


@dataclass(frozen=True)
class ServeConfig:
    """Server settings (the ``slotvlm serve`` options)."""

    served_model_name: str = "slotvlm"
    api_key: str | None = None
    max_body_bytes: int = 100 * 2**20
    media: MediaPolicy = MediaPolicy()
    default_max_tokens: int = 256
    max_tokens_limit: int = 2048


# ------------------------------------------------------------------------------ errors
class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, type_: str = "invalid_request_error",
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.type, self.headers = status, message, code, type_, headers


def error_body(message: str, type_: str, code: str) -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.message, exc.type, exc.code), status_code=exc.status, headers=exc.headers)


# ------------------------------------------------------------------------------ request schema
class VideoURL(BaseModel):
    url: str


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class VideoPart(BaseModel):
    type: Literal["video_url"]
    video_url: VideoURL


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[Union[TextPart, VideoPart]], None] = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: dict | None = None
    n: int = 1


def parse_request(body: bytes) -> ChatRequest:
    """The request body → :class:`ChatRequest`, or an :class:`ApiError` (400) naming the bad field."""
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON ({exc})", "invalid_json") from None
    if not isinstance(obj, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(obj).__name__}", "invalid_request")
    try:
        return ChatRequest.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        # drop pydantic's union-branch names from the location: messages.0.content.1.type
        loc = ".".join(str(x) for x in first["loc"] if not (isinstance(x, str) and ("[" in x or x in ("str", "list"))))
        raise ApiError(400, f"{loc or 'body'}: {first['msg']}", "invalid_request") from None


def _system_text(i: int, m: Message) -> str:
    if m.content is None or isinstance(m.content, str):
        return m.content or ""
    for j, part in enumerate(m.content):
        if not isinstance(part, TextPart):
            raise ApiError(400, f"messages[{i}].content[{j}]: {m.role} messages hold text only", "invalid_messages")
    return "\n".join(p.text for p in m.content if p.text)


def parse_messages(messages: list[Message]) -> tuple[str, list[tuple[str, str]], str, str | None]:
    """OpenAI messages → (question, earlier ``(question, answer)`` turns, video URL, system prompt).

    Leading ``system`` / ``developer`` messages (joined by a blank line) become the conversation's
    system prompt, in place of the template's default (None when there is none); after the first
    user message they are a 400. The turn that holds the video gets ``<video>\\n`` before its text
    (for the first turn exactly the prompt ``SlotVLM.generate`` builds)."""
    systems: list[str] = []
    while messages and messages[0].role in ("system", "developer"):
        systems.append(_system_text(len(systems), messages[0]))
        messages = messages[1:]
    offset = len(systems)
    if not messages:
        raise ApiError(400, "messages hold no user message", "invalid_messages")
    system = "\n\n".join(s for s in systems if s) if systems else None
    turns: list[str] = []
    answers: list[str] = []
    video_url, video_turn = None, None
    for i, m in enumerate(messages, start=offset):
        if m.role in ("system", "developer"):
            raise ApiError(400, f"messages[{i}]: {m.role} messages must come before the first user message",
                           "invalid_messages")
        expected = "user" if (i - offset) % 2 == 0 else "assistant"
        if m.role != expected:
            raise ApiError(400, f"messages[{i}].role must be {expected!r} (messages alternate user/assistant, "
                           f"starting with user), got {m.role!r}", "invalid_messages")
        texts = []
        if isinstance(m.content, str):
            texts.append(m.content)
        elif m.content is not None:
            for j, part in enumerate(m.content):
                if isinstance(part, TextPart):
                    texts.append(part.text)
                elif m.role != "user":
                    raise ApiError(400, f"messages[{i}].content[{j}]: only user messages may hold a video",
                                   "invalid_messages")
                elif video_url is not None:
                    raise ApiError(400, f"messages[{i}].content[{j}]: only one video per conversation is supported",
                                   "invalid_messages")
                else:
                    video_url, video_turn = part.video_url.url, len(turns)
        text = "\n".join(t for t in texts if t)
        if VIDEO_TOKEN in text:
            raise ApiError(400, f"messages[{i}]: text must not contain the reserved marker {VIDEO_TOKEN!r}",
                           "invalid_messages")
        (turns if m.role == "user" else answers).append(text)
    if messages[-1].role != "user":
        raise ApiError(400, "the last message must be a user message", "invalid_messages")
    if video_url is None:
        raise ApiError(400, "no video: one user message must hold a {\"type\": \"video_url\", \"video_url\": "
                       "{\"url\": ...}} content part", "missing_video")
    if not turns[-1].strip():
        raise ApiError(400, f"messages[{offset + len(messages) - 1}]: the last user message has no text",
                       "invalid_messages")
    if system is not None and VIDEO_TOKEN in system:
        raise ApiError(400, f"messages[0]: text must not contain the reserved marker {VIDEO_TOKEN!r}", "invalid_messages")
    turns[video_turn] = f"{VIDEO_TOKEN}\n{turns[video_turn]}"
    return turns[-1], list(zip(turns[:-1], answers)), video_url, system


# ------------------------------------------------------------------------------ ASGI guard
class Guard:
    """Outermost layer: API-key check (constant-time), request-body limit (413) before the body is
    buffered, and the per-route request counter."""

    def __init__(self, app, config: ServeConfig, metrics: Metrics):
        self.app = app
        self.key = config.api_key.encode() if config.api_key else None
        self.limit = config.max_body_bytes
        self.metrics = metrics

    async def _reply(self, send, status: int, body: dict, headers=()) -> None:
        data = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                                *headers]})
        await send({"type": "http.response.body", "body": data})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        label = path if path in ROUTES else "other"
        status = [500]

        async def send_status(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            headers = dict(scope.get("headers") or [])
            if self.key is not None and path != "/health":
                auth = headers.get(b"authorization", b"")
                given = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
                if not hmac.compare_digest(given, self.key):
                    self.metrics.rejected.labels("auth").inc()
                    return await self._reply(send_status, 401, error_body(
                        "invalid or missing API key (send 'Authorization: Bearer <key>')", "invalid_request_error",
                        "invalid_api_key"), [(b"www-authenticate", b"Bearer")])
            too_large = error_body(f"request body is larger than the server's limit ({self.limit} bytes)",
                                   "invalid_request_error", "request_too_large")
            declared = headers.get(b"content-length", b"")
            if declared.isdigit() and int(declared) > self.limit:
                self.metrics.rejected.labels("too_large").inc()
                return await self._reply(send_status, 413, too_large, [(b"connection", b"close")])
            if scope.get("method") in ("POST", "PUT", "PATCH"):
                body, more = bytearray(), True
                while more:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        return
                    body += msg.get("body", b"")
                    more = msg.get("more_body", False)
                    if len(body) > self.limit:
                        self.metrics.rejected.labels("too_large").inc()
                        return await self._reply(send_status, 413, too_large, [(b"connection", b"close")])
                replayed = False

                async def replay():
                    nonlocal replayed
                    if not replayed:
                        replayed = True
                        return {"type": "http.request", "body": bytes(body), "more_body": False}
                    return await receive()

                return await self.app(scope, replay, send_status)
            return await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(label, str(status[0])).inc()


# ------------------------------------------------------------------------------ the app
def create_app(model, config: ServeConfig | None = None, *, max_batch: int = 8, max_queue: int = 64,
               batch_wait_ms: float = 5.0, video_cache_mb: float = 256.0) -> FastAPI:
    """The ASGI app serving ``model`` (a :class:`slotvlm.SlotVLM`). The engine's worker thread starts
    and stops with the app's lifespan. ``app.state.engine`` is the :class:`Engine`."""
    config = config or ServeConfig()
    metrics = Metrics()
    engine = Engine(model.eval(), max_batch=max_batch, max_queue=max_queue, batch_wait_ms=batch_wait_ms,
                    video_cache_mb=video_cache_mb, metrics=metrics)

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="slotvlm", summary="OpenAI-compatible video chat with a Slot-VLM", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.state.config = config
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc: RequestValidationError):
        return _error_response(ApiError(400, f"invalid request: {exc.errors()[:1]}", "invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(ApiError(exc.status_code, str(exc.detail), code))

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):
        log.exception("internal error")
        return _error_response(ApiError(500, "internal server error", "internal_error", "server_error"))

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics_endpoint():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": config.served_model_name, "object": "model", "created": created,
                                            "owned_by": "slotvlm"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        t0 = time.perf_counter()
        req = parse_request(await request.body())
        if req.model is not None and req.model != config.served_model_name:
            raise ApiError(404, f"model {req.model!r} does not exist; this server serves "
                           f"{config.served_model_name!r}", "model_not_found")
        if req.n != 1:
            raise ApiError(400, f"n must be 1, got {req.n}", "invalid_request")
        question, history, url, system = parse_messages(req.messages)
        max_tokens = req.max_completion_tokens or req.max_tokens or config.default_max_tokens
        if max_tokens > config.max_tokens_limit:
            raise ApiError(400, f"max_tokens must be at most {config.max_tokens_limit}, got {max_tokens}",
                           "invalid_request")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > 4 or not all(stop):
            raise ApiError(400, f"stop must be up to 4 non-empty strings, got {req.stop!r}", "invalid_request")
        try:
            engine.admit()
        except QueueFull as exc:
            raise ApiError(429, str(exc), "queue_full", "rate_limit_error",
                           headers={"Retry-After": str(exc.retry_after)}) from None
        submitted = False
        try:
            try:
                media = await run_in_threadpool(fetch_media, url, config.media)
                video = await run_in_threadpool(engine.prepare, media)
            except MediaError as exc:
                raise ApiError(exc.status, str(exc), exc.code) from None
            loop = asyncio.get_running_loop()
            events: asyncio.Queue = asyncio.Queue()

            def put(kind, value):
                loop.call_soon_threadsafe(events.put_nowait, (kind, value))

            job = Job(video, question, history, max_tokens, req.temperature, req.top_p, req.seed, stop,
                      on_text=(lambda d: put("text", d)) if req.stream else (lambda d: None),
                      on_done=lambda r: put("done", r),
                      on_error=lambda e: put("error", e), t_start=t0, system=system)
            engine.submit(job)
            submitted = True
        finally:
            if not submitted:
                engine.release()

        rid = f"chatcmpl-{uuid.uuid4().hex}"
        now = int(time.time())
        cache_header = {"x-slotvlm-video-cache": "hit" if video.hit else "miss"}

        def usage(res):
            return {"prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                    "total_tokens": res.prompt_tokens + res.completion_tokens,
                    "prompt_tokens_details": {"video_tokens": res.video_tokens, "cached_tokens": 0}}

        if req.stream:
            def chunk(delta: dict, finish=None, use=None, choices=True) -> str:
                body = {"id": rid, "object": "chat.completion.chunk", "created": now,
                        "model": config.served_model_name,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
                        if choices else []}
                if use is not None:
                    body["usage"] = use
                return f"data: {json.dumps(body)}\n\n"

            async def sse():
                try:
                    yield chunk({"role": "assistant", "content": ""})
                    while True:
                        kind, value = await events.get()
                        if kind == "text":
                            yield chunk({"content": value})
                        elif kind == "done":
                            yield chunk({}, finish=value.finish_reason)
                            yield chunk({}, use=usage(value), choices=False)
                            break
                        else:
                            yield "data: " + json.dumps(error_body("internal server error", "server_error",
                                                                   "internal_error")) + "\n\n"
                            break
                    yield "data: [DONE]\n\n"
                    metrics.latency.labels("true").observe(time.perf_counter() - t0)
                finally:
                    job.cancel.set()  # a no-op when finished; stops the work when the client left

            return StreamingResponse(sse(), media_type="text/event-stream",
                                     headers={"cache-control": "no-cache", **cache_header})

        # non-streamed: wait for the result, cancel the job if the client goes away meanwhile
        while True:
            try:
                kind, value = await asyncio.wait_for(events.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel.set()
                    return Response(status_code=499)
                continue
            if kind == "error":
                raise ApiError(500, "internal server error", "internal_error", "server_error")
            res = value
            break
        metrics.latency.labels("false").observe(time.perf_counter() - t0)
        body = {"id": rid, "object": "chat.completion", "created": now, "model": config.served_model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": res.text},
                             "finish_reason": res.finish_reason, "logprobs": None}],
                "usage": usage(res)}
        return JSONResponse(body, headers=cache_header)

    app.add_middleware(Guard, config=config, metrics=metrics)  # outermost user middleware: runs before the body is read
    return app
