"""``slotvlm synth``: write a procedurally generated video QA data set (shapes that appear, move
and change colour) in the VideoInstruct-100K and ActivityNet-QA formats."""
from __future__ import annotations

import argparse
import json

HELP = "generate a synthetic video QA data set (mp4 + VideoInstruct/ActivityNet-QA json)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder (videos/, instructions.json, qa/test_q.json, qa/test_a.json)")
    parser.add_argument("--num-videos", type=int, default=None, metavar="N", help="number of videos (>= 2)")
    parser.add_argument("--videos", type=int, default=None, dest="videos_deprecated", metavar="N",
                        help="deprecated spelling of --num-videos (elsewhere --videos names a folder)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the output is a function of it (default 0)")
    parser.add_argument("--seconds", type=float, default=8.0, help="clip length in seconds (default 8)")
    parser.add_argument("--size", type=int, default=112, help="frame width = height in pixels, even (default 112)")
    parser.add_argument("--fps", type=float, default=4.0, help="frame rate of the written mp4 (default 4)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="share of videos held out for qa/test_*.json (default 0.2)")


def run(args: argparse.Namespace) -> int:
    import sys  # noqa: PLC0415

    from ..data.synth import generate  # noqa: PLC0415

    n = args.num_videos
    if args.videos_deprecated is not None:
        print("slotvlm synth: warning: --videos N is deprecated, use --num-videos N", file=sys.stderr)
        if n is not None and n != args.videos_deprecated:
            raise ValueError(f"--num-videos={n} and --videos={args.videos_deprecated} disagree")
        n = args.videos_deprecated
    if n is None:
        raise ValueError("give the number of videos: --num-videos N")
    summary = generate(args.out, n, seed=args.seed, seconds=args.seconds, size=args.size,
                       fps=args.fps, test_fraction=args.test_fraction)
    print(json.dumps(summary))
    return 0
