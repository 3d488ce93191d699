"""`slotvlm chat`: ask a Slot-VLM about a video, once or interactively."""
from __future__ import annotations

import argparse
import sys

from ._model_args import add_device_args, load_model
from ._types import positive_int

HELP = "answer questions about a video with a Slot-VLM (one question, or an interactive session)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder written by `slotvlm init` or training")
    parser.add_argument("--video", required=True, help="video file (decoded at the model's fps, 1 by default)")
    parser.add_argument("--question", default=None,
                        help="ask this and print the answer; without it, read questions from stdin "
                        "until EOF or 'exit' (a multi-turn chat: earlier turns stay in the prompt)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=128, help="answer length limit")
    parser.add_argument("--max-frames", type=positive_int, default=None, help="frame cap (default: the model's max_frames)")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    add_device_args(parser)


def run(args: argparse.Namespace) -> int:
    model = load_model(args)
    model.eval()
    pixels = model.load_video(args.video, max_frames=args.max_frames)
    embeds = model.encode_video([pixels])  # encoded once, reused for every question

    def ask(q: str, history=None) -> str:
        return model.generate(embeds, [q], max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                              history=[history or []])[0]

    if args.question is not None:
        print(ask(args.question))
        return 0
    interactive = sys.stdin.isatty()
    history: list[tuple[str, str]] = []  # earlier turns stay in the prompt (multi-turn chat)
    if interactive:
        print(f"{args.video}: {pixels.shape[0]} frames. Ask a question (empty line or 'exit' to quit).")
    while True:
        try:
            q = input("USER: " if interactive else "")
        except EOFError:
            break
        if q.strip().lower() in ("exit", "quit") or (interactive and not q.strip()):
            break
        if q.strip():
            a = ask(q, history)
            history.append((q, a))
            print(f"ASSISTANT: {a}", flush=True)
    return 0
