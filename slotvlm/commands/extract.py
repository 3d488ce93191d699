"""``slotvlm extract``: the CLIP feature cache (see slotvlm/data/features.py for the file format).

Run under torchrun to shard the videos over processes/GPUs::

    torchrun --standalone --nproc_per_node=8 -m slotvlm extract --videos DIR --vision openai/clip-vit-large-patch14 --out CACHE
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ._types import nonneg_int, positive_float, positive_int

HELP = "extract CLIP features of videos into a resumable cache (8 full frames + all frames pooled 4x4)"

_STORE = {"float16": "float16", "fp16": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16", "float32": "float32",
          "fp32": "float32"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--videos", required=True,
                        help="a folder of videos, or a text file with one video path per line")
    parser.add_argument("--vision", default="openai/clip-vit-large-patch14",
                        help="CLIP checkpoint: hub id or local path (default: %(default)s)")
    parser.add_argument("--out", required=True, help="cache folder (one <video>.safetensors per video)")
    parser.add_argument("--fps", type=positive_float, default=1.0, help="frames sampled per second (default 1)")
    parser.add_argument("--max-frames", type=positive_int, default=None, help="cap on sampled frames per video (uniform)")
    parser.add_argument("--num-slow", type=positive_int, default=8, help="full-resolution frames kept (t_d, default 8)")
    parser.add_argument("--stride", type=positive_int, default=4, help="pooling stride of the fast features (default 4)")
    parser.add_argument("--layer", type=int, default=-2, help="CLIP hidden state to keep (default -2: penultimate)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="frames per CLIP forward pass (default 64)")
    parser.add_argument("--workers", type=nonneg_int, default=0, help="decoding processes per rank (default 0: inline)")
    parser.add_argument("--device", default=None, help="device (default: cuda:LOCAL_RANK when available, else cpu)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16", "fp32", "bf16", "fp16"],
                        help="CLIP compute dtype (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--store-dtype", default="float16", choices=sorted(_STORE),
                        help="dtype of the cached features (default float16: 2 bytes per value)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415

    from .. import distributed  # noqa: PLC0415
    from ..cli import EXIT_FAILURES  # noqa: PLC0415
    from ..data.features import extract  # noqa: PLC0415
    from ..model.modeling import parse_dtype  # noqa: PLC0415

    rank, world, device = distributed.init(args.device, backend="gloo")
    try:
        stats = extract(
            args.videos, args.vision, args.out, fps=args.fps, max_frames=args.max_frames, num_slow=args.num_slow,
            stride=args.stride, layer=args.layer, batch_size=args.batch_size, device=device,
            dtype=parse_dtype(args.dtype), store_dtype=getattr(torch, _STORE[args.store_dtype]), rank=rank,
            world_size=world, workers=args.workers, progress=rank == 0 and not args.no_progress,
        )
        keys = ["done", "skipped", "failed"]
        totals = dict(zip(keys, (int(v) for v in distributed.all_reduce_sum([float(stats[k]) for k in keys]))))
        if rank == 0:
            print(json.dumps(totals | {"cache": args.out, "ranks": world}))
    finally:
        distributed.barrier()
        distributed.shutdown()
    if totals["failed"]:  # every rank: torchrun reports the failure too
        if rank == 0:
            print(f"{totals['failed']} video(s) failed, see {os.path.join(args.out, 'failures.jsonl')}; rerun the "
                  f"same command to retry them", file=sys.stderr)
        return EXIT_FAILURES
    return 0
