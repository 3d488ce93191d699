"""The ``slotvlm`` command line: one entry point, one module per subcommand.

Each subcommand lives in ``slotvlm/commands/<name>.py`` and defines::

    HELP = "one line shown in `slotvlm --help`"
    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...          # the exit status

Modules are imported only when their subcommand runs (``--help`` stays fast).

Exit status of every subcommand:

* ``0`` — done: every item was done;
* ``3`` (:data:`EXIT_FAILURES`) — it finished, but some items were not done (``predict``:
  questions; ``extract``: videos; ``judge``: questions whose judge reply could not be parsed or
  never arrived; ``eval-slots``: videos that could not be read). The totals line counts each kind;
  they are listed in the run's output (failure file, ``failed_ids``) and a rerun of the same
  command retries exactly them (``eval-slots`` keeps no cache: it scores every video again).
  Not 1: Python itself exits 1 on an uncaught exception, so 1 cannot mean "finished". Under
  ``torchrun`` the launcher's own status is 1 whenever a rank exits non-zero; its report names
  the rank's code (``exitcode : 3``);
* ``2`` — it could not run: bad arguments (rejected by the parser, negative numbers included),
  bad input files (wrong format, not UTF-8, nested too deeply, numbers too long), a missing or
  mistyped model path, an ``OSError`` (disk full, permission denied), an unreachable judge. One
  line ``slotvlm <name>: error: ...`` on stderr; ``SLOTVLM_TRACEBACK=1`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

#: exit status of a job that finished with some items not done (see the module docstring)
EXIT_FAILURES = 3

# In the order `slotvlm --help` lists them.
COMMANDS = ["init", "chat", "visualize", "synth", "extract", "train", "predict", "judge", "serve", "demo", "discover", "eval-slots"]


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


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error printed as one line (exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a usage error (already printed): 2; --help / --version exit as usual
        if exc.code in (0, None):
            raise
        return 2
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(_module(args.command))
    try:
        return int(module.run(args) or 0)
    except (ValueError, OSError, RecursionError) as exc:
        # Bad input (arguments, files, model folders, videos; UnicodeDecodeError is a ValueError)
        # or the system refusing (disk full, permissions, a hub lookup of a mistyped path): one
        # line, no traceback, exit 2.
        if os.environ.get("SLOTVLM_TRACEBACK") == "1":
            raise
        print(f"slotvlm {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # a command's `raise SystemExit("slotvlm x: ...")`: bad usage, exit 2
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 2
        raise


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "an input is nested too deeply to read (RecursionError)"
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        text = f"{type(exc).__name__}: {text}"
    return text[:2000]


if __name__ == "__main__":
    sys.exit(main())
