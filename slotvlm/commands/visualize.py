"""`slotvlm visualize`: draw object-slot and event-slot attention masks for a video."""
from __future__ import annotations

import argparse

from ._model_args import add_device_args, load_model
from ._types import positive_int

HELP = "draw the object-slot masks on each sampled frame and the event-slot masks over time (PNG)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (slowfast or qformer connector)")
    parser.add_argument("--video", required=True, help="video file")
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("--cell", type=positive_int, default=96, help="size in pixels of one frame tile")
    parser.add_argument("--max-frames", type=positive_int, default=None, help="frame cap (default: the model's max_frames)")
    add_device_args(parser)


def run(args: argparse.Namespace) -> int:
    from ..model.visualize import visualize_video  # noqa: PLC0415

    model = load_model(args)
    model.eval()
    img = visualize_video(model, args.video, args.out, cell=args.cell, max_frames=args.max_frames)
    print(f"wrote {args.out} ({img.width}x{img.height})")
    return 0
