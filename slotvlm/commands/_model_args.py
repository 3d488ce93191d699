"""Options shared by the model's subcommands (init, chat, visualize)."""
from __future__ import annotations

import argparse


def add_device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None,
                        help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16", "fp32", "bf16", "fp16"],
                        help="dtype of the frozen CLIP and LLM (default: bf16 on cuda, fp32 on cpu); "
                        "the connector always runs in fp32")
    parser.add_argument("--backend", default=None, choices=["auto", "torch", "triton"],
                        help="slot-attention backend (default: $SLOTVLM_BACKEND, else auto)")


def load_model(args: argparse.Namespace):
    from ..model import SlotVLM  # noqa: PLC0415

    return SlotVLM.from_pretrained(args.model, device=args.device, dtype=args.dtype, backend=args.backend)


