"""``slotvlm eval-slots``: how well Slot-VLM's object slots segment the objects, and its event slots
the events, of held-out synthetic videos (see slotvlm/eval/slots.py for the protocol).

    slotvlm synth DATA --videos 100
    slotvlm eval-slots --model S1 --data DATA                      # FG-ARI / mBO, event ARI (JSON)
    slotvlm eval-slots --model S1 --data DATA --resolution patch   # ground truth downsampled to 16×16
"""
from __future__ import annotations

import argparse
import json
import sys

HELP = "measure object/event slot segmentation (FG-ARI, mBO, event ARI) on `slotvlm synth` videos"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 2)[2]
    parser.add_argument("--model", required=True, help="Slot-VLM model folder (slotvlm init / train)")
    parser.add_argument("--data", required=True, help="a `slotvlm synth` folder (meta.json + videos/)")
    parser.add_argument("--split", default="test", choices=["test", "train", "all"],
                        help="which videos (default test: the held-out ones)")
    parser.add_argument("--resolution", default="frame", choices=["frame", "patch"],
                        help="frame (default): slot masks upsampled bilinearly to the frame size; "
                        "patch: ground truth downsampled to the G×G patch grid")
    parser.add_argument("--max-videos", type=int, default=None, help="evaluate at most this many videos")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--backend", default=None, choices=["auto", "torch", "triton"],
                        help="slot-attention backend (default: $SLOTVLM_BACKEND, else auto)")
    parser.add_argument("--out", default=None, help="also write the JSON result to this file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415

    from ..eval.slots import evaluate_slots  # noqa: PLC0415
    from ..model import SlotVLM  # noqa: PLC0415

    model = SlotVLM.from_pretrained(args.model, device=args.device, dtype=torch.float32, backend=args.backend)
    result = evaluate_slots(model, args.data, split=args.split, resolution=args.resolution,
                            max_videos=args.max_videos, progress=not args.no_progress)
    result["model"] = args.model
    text = json.dumps(result, indent=1)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text)
    if result["failed"]:
        from ..cli import EXIT_FAILURES  # noqa: PLC0415

        print(f"slotvlm eval-slots: {result['failed']} of {result['failed'] + result['videos']} video(s) could not be "
              "read and were skipped (see failed_videos)", file=sys.stderr)
        return EXIT_FAILURES
    return 0
