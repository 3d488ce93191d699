"""`slotvlm visualize`: draw object-slot and event-slot attention for a video (a labelled PNG)."""
from __future__ import annotations

import argparse

from ._model_args import add_device_args, add_model_arg, load_model
from ._types import positive_int

HELP = "draw the object slots on the sampled frames and the event slots over time (labelled PNG, matplotlib)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Object slots: one row per sampled frame (its time in seconds), the frame, the winning slot per "
        "patch and each slot's attention mask, with a colour legend. Event slots: for every pooled position "
        "an N_f x T map of the slots' attention over time. A branch the model lacks is said in the figure and "
        "here. Needs matplotlib (pip install 'slotvlm[viz]')."
    )
    add_model_arg(parser, " (slowfast or qformer connector)")
    parser.add_argument("--video", required=True, help="video file")
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("--cell", type=positive_int, default=96, help="size in pixels of one frame tile (default 96)")
    parser.add_argument("--max-frames", type=positive_int, default=None, help="frame cap (default: the model's max_frames)")
    add_device_args(parser)


def run(args: argparse.Namespace) -> int:
    from ..model.visualize import visualize_video  # noqa: PLC0415

    if args.cell < 16:
        raise ValueError(f"--cell must be >= 16 pixels, got {args.cell}")
    model = load_model(args)
    model.eval()
    img = visualize_video(model, args.video, args.out, cell=args.cell, max_frames=args.max_frames)
    print(f"wrote {args.out} ({img.width}x{img.height})")
    return 0
