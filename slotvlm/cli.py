"""The ``slotvlm`` command line: one entry point, one module per subcommand.

Each subcommand lives in ``slotvlm/commands/<name>.py`` and defines::

    HELP = "one line shown in `slotvlm --help`"
    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...          # the exit status

Modules are imported only when their subcommand runs (``--help`` stays fast). A ``ValueError`` or
``FileNotFoundError`` raised by ``run`` (bad input) is printed as ``slotvlm <name>: error: ...``
with exit status 2; ``SLOTVLM_TRACEBACK=1`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

# In the order `slotvlm --help` lists them.
COMMANDS = ["init", "chat", "visualize", "synth", "extract", "train", "predict", "judge", "discover", "eval-slots"]


def _module(name: str) -> str:
    """The module of a subcommand: ``eval-slots`` lives in ``slotvlm/commands/eval_slots.py``."""
    return f"slotvlm.commands.{name.replace('-', '_')}"


def _available() -> list[str]:
    return [c for c in COMMANDS if importlib.util.find_spec(_module(c)) is not None]


def _help_line(name: str) -> str:
    # Read HELP without importing the module (which may pull in torch/transformers).
    spec = importlib.util.find_spec(_module(name))
    try:
        with open(spec.origin, encoding="utf-8") as f:
            for line in f:
                if line.startswith("HELP = "):
                    return eval(line.split("=", 1)[1].strip(), {})  # a plain string literal
    except (OSError, SyntaxError):
        pass
    return ""


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slotvlm",
        description="Slot-VLM: video question answering with object and event slots. "
        "Run `slotvlm <command> --help` for a command's options.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"slotvlm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in _available():
        p = sub.add_parser(name, help=_help_line(name), description=_help_line(name))
        if name == selected:
            importlib.import_module(_module(name)).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected if selected in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(_module(args.command))
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        # Bad input (arguments, files, model folders, videos): one line, no traceback, exit 2.
        if os.environ.get("SLOTVLM_TRACEBACK") == "1":
            raise
        print(f"slotvlm {args.command}: error: {exc}", file=sys.stderr)
        print("(set SLOTVLM_TRACEBACK=1 to see the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
