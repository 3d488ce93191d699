"""`slotvlm demo`: a gradio web app — chat about a video beside the picture of its slots."""
from __future__ import annotations

import argparse
import os

from ._model_args import add_device_args, load_model

HELP = "a web demo (gradio): upload a video, chat about it with streamed answers, see its object and event slots"

VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (a slowfast connector, for the slot picture)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="TCP port (default 7860)")
    parser.add_argument("--examples", default=None, metavar="DIR",
                        help="a folder of videos offered to pick from (e.g. the videos of `slotvlm synth`)")
    add_device_args(parser)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no calls home
    try:
        import gradio  # noqa: F401, PLC0415
    except ImportError as exc:
        raise ValueError(f"slotvlm demo needs the 'demo' extra: pip install 'slotvlm[demo]' ({exc})") from None
    from ..serve.demo import build_demo  # noqa: PLC0415

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    examples = None
    if args.examples is not None:
        if not os.path.isdir(args.examples):
            raise ValueError(f"--examples must be a folder of videos, got {args.examples!r}")
        examples = sorted(os.path.join(args.examples, f) for f in os.listdir(args.examples)
                          if f.lower().endswith(VIDEO_EXTS))[:24]
        if not examples:
            raise ValueError(f"--examples {args.examples!r} holds no video files ({', '.join(VIDEO_EXTS)})")
    model = load_model(args)
    demo = build_demo(model, examples=examples)
    demo.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port, share=False,
                                                   show_error=True, inbrowser=False)
    return 0
