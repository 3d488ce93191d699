"""``slotvlm train``: one stage of Slot-VLM training on the feature cache (see slotvlm/train/trainer.py).

    slotvlm train --stage 1 --model INIT --features CACHE --out S1                       # slot reconstruction
    slotvlm train --stage 2 --model S1 --features CACHE --data train.json --branch slow --out S2_OBJ
    slotvlm train --stage 2 --model S1 --features CACHE --data train.json --branch fast --out S2_EVT
    slotvlm train --stage 3 --model S1 S2_OBJ S2_EVT --features CACHE --data train.json --out S3
    torchrun --nproc_per_node=8 -m slotvlm train ...                                     # DDP
"""
from __future__ import annotations

import argparse
import json

from ._types import nonneg_float, nonneg_int, positive_float, positive_int

HELP = "train Slot-VLM on cached features: stage 1 (slot reconstruction), 2 (one branch), 3 (both)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 2)[2]
    parser.add_argument("--stage", type=int, required=True, choices=[1, 2, 3],
                        help="1: pre-train slot attention by feature reconstruction; 2: instruction-tune one "
                        "branch (--branch) + projections; 3: both branches jointly")
    parser.add_argument("--model", nargs="+", required=True,
                        help="model folder(s) (slotvlm init / an earlier stage). The first gives the config; "
                        "connector weights of all are loaded in order, later ones overriding")
    parser.add_argument("--features", required=True, help="feature cache folder (slotvlm extract)")
    parser.add_argument("--data", default=None,
                        help="instruction JSON (VideoInstruct-100K [{video_id,q,a}]); required for stages 2/3, "
                        "optional for stage 1 (restricts the videos)")
    parser.add_argument("--branch", default=None, choices=["slow", "fast"],
                        help="stage 2: slow = object branch, fast = event branch; stage 1: only this branch")
    parser.add_argument("--out", required=True, help="output folder (model, checkpoints, log.jsonl)")
    parser.add_argument("--epochs", type=positive_int, default=3, help="passes over the data (default 3)")
    parser.add_argument("--lr", type=positive_float, default=None, help="peak learning rate (default 1e-4 stage 1, 2e-5 stages 2/3)")
    parser.add_argument("--batch-size", type=positive_int, default=40, help="global batch per optimizer step (default 40)")
    parser.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per rank per step (default 1)")
    parser.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many steps (overrides --epochs)")
    parser.add_argument("--warmup", type=nonneg_float, default=0.03, help="linear warm-up fraction of the cosine schedule")
    parser.add_argument("--weight-decay", type=nonneg_float, default=0.0, help="AdamW weight decay (default 0)")
    parser.add_argument("--max-grad-norm", type=nonneg_float, default=1.0, help="gradient clipping (0: off)")
    parser.add_argument("--seed", type=nonneg_int, default=0, help="seed of data order, initialisation and noise")
    parser.add_argument("--save-every", type=positive_int, default=None, help="checkpoint every N steps (default: at the end)")
    parser.add_argument("--keep-checkpoints", type=positive_int, default=2, help="checkpoints kept (default 2)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--stop-after", type=positive_int, default=None,
                        help="leave after this step (with a checkpoint) without finishing the schedule; "
                        "continue later with --resume")
    parser.add_argument("--fsdp", action="store_true", help="shard the frozen LLM across ranks with FSDP2")
    parser.add_argument("--gradient-checkpointing", default=None, choices=["on", "off"],
                        help="LLM gradient checkpointing (default: on for cuda, off for cpu)")
    parser.add_argument("--decoder-layers", type=positive_int, default=2, help="stage 1 decoder depth (default 2)")
    parser.add_argument("--device", default=None, help="device (default: cuda:LOCAL_RANK when available, else cpu)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16", "fp32", "bf16", "fp16"],
                        help="dtype of the frozen LLM (default bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--backend", default=None, choices=["auto", "torch", "triton"],
                        help="slot-attention backend (default: $SLOTVLM_BACKEND, else auto)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..train import TrainConfig, train  # noqa: PLC0415

    gc = None if args.gradient_checkpointing is None else args.gradient_checkpointing == "on"
    cfg = TrainConfig(
        stage=args.stage, model=args.model, features=args.features, out=args.out, data=args.data,
        branch=args.branch, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
        max_steps=args.max_steps, warmup=args.warmup, weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm, seed=args.seed, save_every=args.save_every,
        keep_checkpoints=args.keep_checkpoints, resume=args.resume, stop_after=args.stop_after, fsdp=args.fsdp,
        device=args.device, dtype=args.dtype, backend=args.backend, gradient_checkpointing=gc,
        decoder_layers=args.decoder_layers, progress=not args.no_progress,
    )
    result = train(cfg)
    import os  # noqa: PLC0415

    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(result))
    return 0
