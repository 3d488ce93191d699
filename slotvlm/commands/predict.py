"""``slotvlm predict``: answer a video QA set with a Slot-VLM (batched, greedy, resumable, sharded)."""
from __future__ import annotations

import argparse
import json
import sys

from ._model_args import add_device_args
from ._types import positive_int

HELP = "answer a video QA set with a Slot-VLM -> preds.jsonl (batched, resumable, torchrun-sharded)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Answer every question of a QA set (MSVD-QA / MSRVTT-QA single JSON file, or an "
        "ActivityNet-QA folder / test_q.json with its test_a.json) with greedy decoding. Writes "
        "one JSON line per question ({question_id, video, question, answer, pred}) as soon as its "
        "batch is done; a rerun skips answered questions. Questions that fail (missing video, "
        "decode error, out of memory) go to OUT.failures.jsonl and are retried by a rerun. Under "
        "`torchrun --nproc_per_node=N -m slotvlm predict ...` the videos are split over the ranks; "
        "each writes OUT.rank<r>, and rank 0 merges them into OUT at the end."
    )
    p.add_argument("--model", required=True, help="model folder (slotvlm init / train)")
    p.add_argument("--qa", required=True,
                   help="QA set: a JSON file, or a folder / test_q.json in the ActivityNet-QA layout")
    p.add_argument("--videos", default=None,
                   help="folder of the videos (searched recursively; .mp4 .mkv .webm .avi .mov, "
                   "with or without ActivityNet's v_ prefix)")
    p.add_argument("--features", default=None, metavar="CACHE",
                   help="feature cache of `slotvlm extract`, used instead of decoding videos")
    p.add_argument("--out", required=True, help="predictions file (JSON lines)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="questions per generate call (default 8)")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="answer length limit (default 64)")
    p.add_argument("--max-frames", type=positive_int, default=None,
                   help="frame cap per video (default: the model's max_frames)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_args(p)


def run(args: argparse.Namespace) -> int:
    from .. import distributed  # noqa: PLC0415
    from ..cli import EXIT_FAILURES  # noqa: PLC0415
    from ..eval.predict import failures_path, run_predict  # noqa: PLC0415

    if args.videos is None and args.features is None:
        raise SystemExit("slotvlm predict: give --videos DIR or --features CACHE")
    rank, world, device = distributed.init(args.device, backend="gloo")
    try:
        stats = run_predict(
            args.model, args.qa, args.out, videos=args.videos, features=args.features,
            device=device, dtype=args.dtype, backend=args.backend, rank=rank, world_size=world,
            barrier=distributed.barrier, batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens, max_frames=args.max_frames,
            progress=rank == 0 and not args.no_progress,
        )
    finally:
        distributed.shutdown()
    if rank != 0:
        return 0
    merged = stats["merged"]
    print(json.dumps({"out": args.out, "ranks": world, **merged}))
    if merged["failed"]:
        print(f"{merged['failed']} question(s) failed, see {failures_path(args.out)}; rerun the same "
              f"command to retry them", file=sys.stderr)
        return EXIT_FAILURES
    return 0
