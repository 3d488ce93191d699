"""`slotvlm init`: write a fresh, untrained Slot-VLM (config + connector weights + model card) to a folder."""
from __future__ import annotations

import argparse

from ._model_args import add_device_args
from ._types import nonneg_int, positive_int

HELP = "create a fresh, untrained Slot-VLM from a CLIP and a causal LM, or --tiny: all-random and offline"

PAPER = dict(vision="openai/clip-vit-large-patch14", llm="lmsys/vicuna-7b-v1.5")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write a Slot-VLM folder (config.json, connector.safetensors, README.md model card) with a freshly "
        "initialised connector. The base models are referenced, not copied: hub ids as given, local folders "
        "by a path relative to OUT. `slotvlm init --tiny OUT` needs no download: it also builds a tiny random "
        "CLIP (OUT/clip), a tiny random LLaMA with a tokenizer and chat template (OUT/llm) and a small "
        "connector, for trying every command offline in seconds (its answers are noise)."
    )
    parser.add_argument("out_pos", nargs="?", metavar="OUT", help="output folder (or --out)")
    parser.add_argument("--out", default=None, help="output folder (same as the positional OUT)")
    parser.add_argument("--tiny", action="store_true",
                        help="build tiny random base models inside OUT (no download) and a small connector "
                        "(slot dim 32, the paper's 192 tokens)")
    parser.add_argument("--vision", default=None,
                        help=f"CLIP checkpoint: hub id or local path (default: {PAPER['vision']})")
    parser.add_argument("--llm", default=None, help=f"causal LM: hub id or local path (default: {PAPER['llm']})")
    parser.add_argument("--tokenizer", default=None, help="tokenizer id or path (default: the LLM's)")
    parser.add_argument("--connector", default="slowfast", choices=["slowfast", "pooling", "qformer"],
                        help="slowfast = Slot-VLM; pooling = Video-ChatGPT (356 tokens); qformer = learned queries")
    parser.add_argument("--branches", default="both", choices=["both", "object", "event"],
                        help="which branches to build (object-only: 64 tokens, event-only: 128)")
    size = parser.add_argument_group("connector size (defaults: the paper's; with --tiny: slot/proj width 32, "
                                     "64 frames)")
    size.add_argument("--num-slow-frames", type=positive_int, default=8, help="t_d, frames of the object branch (8)")
    size.add_argument("--num-slots-slow", type=positive_int, default=8, help="N_s, object slots per frame (8)")
    size.add_argument("--num-slots-fast", type=positive_int, default=8, help="N_f, event slots per position (8)")
    size.add_argument("--pool-stride", type=positive_int, default=4, help="event branch pooling stride (4 → 4×4)")
    size.add_argument("--slot-dim", type=positive_int, default=None, help="slot width (1024; --tiny: 32)")
    size.add_argument("--slot-hidden-dim", type=positive_int, default=None,
                      help="hidden width of the slot MLP (default: the slot width)")
    size.add_argument("--slot-iters", type=positive_int, default=3, help="slot attention iterations (3)")
    size.add_argument("--proj-dim", type=positive_int, default=None, help="width of S-Proj/F-Proj (1024; --tiny: 32)")
    size.add_argument("--max-frames", type=positive_int, default=None,
                      help="temporal position table size and default frame cap per video (256; --tiny: 64)")
    parser.add_argument("--event-encoder", default="slot_attention", choices=["slot_attention", "slot_ssm"])
    parser.add_argument("--license", default=None,
                        help="license written into the model card (default: apache-2.0 with --tiny, else 'other')")
    parser.add_argument("--seed", type=nonneg_int, default=0, help="seed of the connector (and, with --tiny, base models)")
    add_device_args(parser)


def run(args: argparse.Namespace) -> int:
    from ..model import SlotVLM, SlotVLMConfig  # noqa: PLC0415
    from ..testing import TINY_CONNECTOR  # noqa: PLC0415

    if args.out and args.out_pos and args.out != args.out_pos:
        raise ValueError(f"two output folders given: OUT={args.out_pos!r} and --out={args.out!r}")
    out = args.out or args.out_pos
    if not out:
        raise ValueError("give the output folder: `slotvlm init [--tiny] OUT`")
    if args.tiny and (args.vision or args.llm or args.tokenizer):
        raise ValueError("--tiny builds its own base models: drop --vision/--llm/--tokenizer")
    defaults = TINY_CONNECTOR if args.tiny else dict(slot_dim=1024, proj_dim=1024, max_frames=256)
    slot_dim = args.slot_dim or defaults["slot_dim"]
    sizes = dict(
        connector=args.connector, use_slow=args.branches in ("both", "object"),
        use_fast=args.branches in ("both", "event"), num_slow_frames=args.num_slow_frames,
        num_slots_slow=args.num_slots_slow, num_slots_fast=args.num_slots_fast, pool_stride=args.pool_stride,
        slot_dim=slot_dim, slot_hidden_dim=args.slot_hidden_dim or slot_dim, slot_iters=args.slot_iters,
        proj_dim=args.proj_dim or defaults["proj_dim"], max_frames=args.max_frames or defaults["max_frames"],
        event_encoder=args.event_encoder,
    )
    if args.tiny:
        from ..testing import make_tiny_bundle  # noqa: PLC0415

        extra = {"license": args.license} if args.license else {}
        make_tiny_bundle(out, seed=args.seed, extra=extra, **sizes)
        model = SlotVLM.from_pretrained(out, device="cpu")
    else:
        cfg = SlotVLMConfig(vision_model=args.vision or PAPER["vision"], llm_model=args.llm or PAPER["llm"],
                            tokenizer=args.tokenizer, **sizes)
        model = SlotVLM.from_config(cfg, device=args.device, dtype=args.dtype, backend=args.backend, seed=args.seed)
        model.save_pretrained(out, license=args.license)
    n = sum(p.numel() for p in model.connector.parameters())
    print(f"wrote {out}: connector={model.config.connector}, {model.config.num_tokens} video tokens, "
          f"{n:,} trainable parameters" + (" (tiny random base models in it: clip/, llm/)" if args.tiny else ""))
    return 0
