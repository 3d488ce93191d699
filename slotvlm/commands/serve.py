"""`slotvlm serve`: an OpenAI-compatible chat-completions server for a Slot-VLM (FastAPI + uvicorn)."""
from __future__ import annotations

import argparse
import os

from ._model_args import add_device_args, load_model

HELP = "serve a Slot-VLM behind an OpenAI-compatible /v1/chat/completions API with video_url parts"


def _positive(kind):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a positive {kind.__name__}, got {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be a positive {kind.__name__}, got {text!r}")
        return v
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Endpoints: GET /v1/models, POST /v1/chat/completions (video_url content parts; stream, max_tokens, "
        "temperature, top_p, seed, stop), GET /metrics (Prometheus text), GET /health. "
        "The API key may also come from $SLOTVLM_API_KEY (keeps it out of the process list).")
    parser.add_argument("--model", required=True, help="model folder written by `slotvlm init` or training")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes the server)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--served-model-name", default=None,
                        help="the model id clients send and /v1/models lists (default: the model folder's name)")
    parser.add_argument("--api-key", default=None,
                        help="require 'Authorization: Bearer KEY' on every route but /health "
                        "(default: $SLOTVLM_API_KEY, else no key)")
    parser.add_argument("--allowed-local-media-path", default=None, metavar="DIR",
                        help="allow file:// video URLs, only for files inside DIR (default: file:// refused)")
    parser.add_argument("--allow-remote-media", action="store_true",
                        help="allow http(s):// video URLs, fetched by the server (default: refused)")
    parser.add_argument("--video-cache-mb", type=_positive(float), default=256.0,
                        help="memory bound of the LRU cache of video tokens, keyed by content hash (default 256)")
    parser.add_argument("--max-batch", type=_positive(int), default=8, help="requests decoded together (default 8)")
    parser.add_argument("--max-queue", type=_positive(int), default=64,
                        help="requests admitted at once (queued + running); more get 429 + Retry-After (default 64)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0,
                        help="how long the worker waits to fill a batch (default 5 ms)")
    parser.add_argument("--max-body-mb", type=_positive(float), default=100.0,
                        help="request body limit, 413 above it (default 100)")
    parser.add_argument("--max-video-mb", type=_positive(float), default=64.0,
                        help="video size limit after decoding a data URL / reading a file, 413 above it (default 64)")
    parser.add_argument("--max-tokens", type=_positive(int), default=256,
                        help="answer length when a request gives no max_tokens (default 256)")
    parser.add_argument("--max-tokens-limit", type=_positive(int), default=2048,
                        help="the largest max_tokens a request may ask for (default 2048)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                        help="uvicorn's log level (default info)")
    add_device_args(parser)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: PLC0415

        from ..serve.app import ServeConfig, create_app  # noqa: PLC0415
        from ..serve.media import MediaPolicy  # noqa: PLC0415
    except ImportError as exc:
        raise ValueError(f"slotvlm serve needs the 'serve' extra: pip install 'slotvlm[serve]' ({exc})") from None
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    local = args.allowed_local_media_path
    if local is not None and not os.path.isdir(local):
        raise ValueError(f"--allowed-local-media-path must be an existing folder, got {local!r}")
    if args.max_tokens > args.max_tokens_limit:
        raise ValueError(f"--max-tokens ({args.max_tokens}) must not exceed --max-tokens-limit ({args.max_tokens_limit})")
    api_key = args.api_key or os.environ.get("SLOTVLM_API_KEY") or None
    name = args.served_model_name or os.path.basename(os.path.normpath(args.model))
    model = load_model(args)
    config = ServeConfig(
        served_model_name=name, api_key=api_key, max_body_bytes=int(args.max_body_mb * 2**20),
        media=MediaPolicy(max_video_bytes=int(args.max_video_mb * 2**20), allowed_local_media_path=local,
                          allow_remote_media=args.allow_remote_media),
        default_max_tokens=args.max_tokens, max_tokens_limit=args.max_tokens_limit)
    app = create_app(model, config, max_batch=args.max_batch, max_queue=args.max_queue,
                     batch_wait_ms=args.batch_wait_ms, video_cache_mb=args.video_cache_mb)
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(f"slotvlm serve: warning: listening on {args.host} without --api-key", flush=True)
    print(f"slotvlm serve: model {name!r} on http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0
