"""`slotvlm init`: write a fresh, untrained Slot-VLM (config + connector weights) to a folder."""
from __future__ import annotations

import argparse

from ._model_args import add_device_args
from ._types import nonneg_int, positive_int

HELP = "create a fresh, untrained Slot-VLM from a CLIP and a causal LM (hub ids or local paths)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vision", default="openai/clip-vit-large-patch14",
                        help="CLIP checkpoint: hub id or local path (default: %(default)s)")
    parser.add_argument("--llm", default="lmsys/vicuna-7b-v1.5",
                        help="causal LM: hub id or local path (default: %(default)s)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer id or path (default: the LLM's)")
    parser.add_argument("--out", required=True, help="output folder (slotvlm_config.json + connector.safetensors)")
    parser.add_argument("--connector", default="slowfast", choices=["slowfast", "pooling", "qformer"],
                        help="slowfast = Slot-VLM; pooling = Video-ChatGPT (356 tokens); qformer = learned queries")
    parser.add_argument("--branches", default="both", choices=["both", "object", "event"],
                        help="which branches to build (object-only: 64 tokens, event-only: 128)")
    parser.add_argument("--num-slow-frames", type=positive_int, default=8, help="t_d, frames of the object branch")
    parser.add_argument("--num-slots-slow", type=positive_int, default=8, help="N_s, object slots per frame")
    parser.add_argument("--num-slots-fast", type=positive_int, default=8, help="N_f, event slots per position")
    parser.add_argument("--pool-stride", type=positive_int, default=4, help="event branch pooling stride (4 → 4×4)")
    parser.add_argument("--slot-dim", type=positive_int, default=1024, help="slot width")
    parser.add_argument("--slot-iters", type=positive_int, default=3, help="slot attention iterations")
    parser.add_argument("--proj-dim", type=positive_int, default=1024, help="width of S-Proj/F-Proj")
    parser.add_argument("--max-frames", type=positive_int, default=256,
                        help="temporal position table size and default frame cap per video")
    parser.add_argument("--event-encoder", default="slot_attention", choices=["slot_attention", "slot_ssm"])
    parser.add_argument("--seed", type=nonneg_int, default=0, help="seed of the connector's initialisation")
    add_device_args(parser)


def run(args: argparse.Namespace) -> int:
    from ..model import SlotVLM, SlotVLMConfig  # noqa: PLC0415

    cfg = SlotVLMConfig(
        vision_model=args.vision, llm_model=args.llm, tokenizer=args.tokenizer, connector=args.connector,
        use_slow=args.branches in ("both", "object"), use_fast=args.branches in ("both", "event"),
        num_slow_frames=args.num_slow_frames, num_slots_slow=args.num_slots_slow,
        num_slots_fast=args.num_slots_fast, pool_stride=args.pool_stride, slot_dim=args.slot_dim,
        slot_hidden_dim=args.slot_dim, slot_iters=args.slot_iters, proj_dim=args.proj_dim,
        max_frames=args.max_frames, event_encoder=args.event_encoder,
    )
    model = SlotVLM.from_config(cfg, device=args.device, dtype=args.dtype, backend=args.backend, seed=args.seed)
    model.save_pretrained(args.out)
    n = sum(p.numel() for p in model.connector.parameters())
    print(f"wrote {args.out}: connector={cfg.connector}, {model.config.num_tokens} video tokens, "
          f"{n:,} trainable parameters")
    return 0
