"""Options shared by the model's subcommands (init, chat, visualize, predict, ...)."""
from __future__ import annotations

import argparse

# every spelling a --dtype option accepts → the torch attribute name
DTYPE_ALIASES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}


def dtype_name(value: str) -> str:
    """argparse ``type=`` for ``--dtype``: any alias (``bf16``, ``fp32``, ``bfloat16``, ``half``...) →
    the torch name (``"bfloat16"``...), so ``getattr(torch, args.dtype)`` works."""
    key = str(value).strip().lower()
    if key not in DTYPE_ALIASES:
        raise argparse.ArgumentTypeError(f"invalid dtype {value!r}: choose one of {', '.join(DTYPE_ALIASES)}")
    return DTYPE_ALIASES[key]


def add_device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None,
                        help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", default=None, type=dtype_name, metavar="DTYPE",
                        help="dtype of the frozen CLIP and LLM: float32/fp32, bfloat16/bf16, float16/fp16 "
                        "(default: bf16 on cuda, fp32 on cpu); the connector always runs in fp32")
    parser.add_argument("--backend", default=None, choices=["auto", "torch", "triton"],
                        help="slot-attention backend (default: $SLOTVLM_BACKEND, else auto)")


def add_model_arg(parser: argparse.ArgumentParser, what: str = "") -> None:
    parser.add_argument("--model", required=True, metavar="DIR|HUB_ID",
                        help="a model folder (`slotvlm init`, `slotvlm train`) or a hub repo id" + what)


def load_model(args: argparse.Namespace):
    from ..model import SlotVLM  # noqa: PLC0415

    return SlotVLM.from_pretrained(args.model, device=args.device, dtype=args.dtype, backend=args.backend)
