"""`slotvlm chat`: ask a Slot-VLM about a video, once or interactively; answers stream as generated."""
from __future__ import annotations

import argparse
import sys

from ._model_args import add_device_args, add_model_arg, load_model
from ._types import positive_int

HELP = "answer questions about a video with a Slot-VLM (one question, or a multi-turn session), streamed"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Encode a video once, then answer questions about it. Answers are printed token by token as the "
        "LLM generates them. The prompt uses the tokenizer's chat template when it has one, else Vicuna v1; "
        "in a session every earlier turn stays in the prompt."
    )
    add_model_arg(parser)
    parser.add_argument("--video", required=True, help="video file (decoded at the model's fps, 1 by default)")
    parser.add_argument("--question", default=None,
                        help="ask this and print the answer; without it, read questions from stdin "
                        "until EOF or 'exit' (a multi-turn chat: earlier turns stay in the prompt)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=128, help="answer length limit")
    parser.add_argument("--max-frames", type=positive_int, default=None, help="frame cap (default: the model's max_frames)")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--no-stream", action="store_true", help="print each answer only when it is complete")
    parser.add_argument("--system", default=None, metavar="TEXT",
                        help="system prompt of the conversation, in place of the template's default (Vicuna v1's "
                        "fixed sentence, or none for a tokenizer template); goes through the tokenizer's chat "
                        "template as a system message when it has one")
    add_device_args(parser)


def run(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    model = load_model(args)
    model.eval()
    pixels = model.load_video(args.video, max_frames=args.max_frames)
    embeds = model.encode_video([pixels])  # encoded once, reused for every question

    def ask(q: str, history: list[tuple[str, str]], prefix: str = "") -> str:
        if args.no_stream:
            a = model.generate(embeds, [q], max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                               history=[history], system=args.system)[0]
            print(prefix + a, flush=True)
            return a
        sys.stdout.write(prefix)
        pieces = []
        for piece in model.stream(embeds, q, max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                                  history=history, system=args.system):
            if not pieces:
                piece = piece.lstrip()
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        return "".join(pieces).strip()

    if args.question is not None:
        ask(args.question, [])
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
            history.append((q, ask(q, history, prefix="ASSISTANT: ")))
    return 0
