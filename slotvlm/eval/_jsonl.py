"""Append-only JSON-lines files that survive being killed mid-write or a full disk (shared by
predict and judge).

A run killed while writing (or stopped by a full disk) can leave the last line of a file cut
short: a *torn* last line, with no newline at its end and not valid JSON (possibly cut inside a
UTF-8 character). Readers skip exactly such a line, with a warning; the appender removes it before
writing more, so it never ends up in the middle of the file. Every complete line is kept.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Iterator


def _parse(raw: bytes):
    """One line's JSON value; ``ValueError`` (bad UTF-8, bad JSON, a too-long integer) or
    ``RecursionError`` (absurd nesting) otherwise."""
    return json.loads(raw.decode("utf-8"))


def _describe(e: BaseException) -> str:
    if isinstance(e, RecursionError):
        return "nested too deeply"
    if isinstance(e, UnicodeDecodeError):
        return f"not valid UTF-8 ({e.reason} at byte {e.start})"
    return str(e)[:200]


def iter_jsonl(path: str | os.PathLike, what: str = "file") -> Iterator[tuple[int, object]]:
    """``(line number, JSON value)`` of each non-blank line of a jsonl file (nothing when it does
    not exist). A torn last line is skipped with a warning; a bad line elsewhere is a
    ``ValueError`` naming ``what``, the file and the line."""
    path = str(path)
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            value = _parse(raw)
        except (ValueError, RecursionError) as e:
            if n == len(lines):  # no newline after it: cut short while being written
                warnings.warn(f"{what} {path!r}: skipping the torn last line {n} ({len(raw)} bytes, "
                              f"{_describe(e)}); a rerun redoes it", stacklevel=2)
                return
            raise ValueError(f"{what} {path!r} line {n} is not valid JSON: {_describe(e)}: "
                             f"{raw[:120].decode('utf-8', 'replace')!r}") from None
        yield n, value


def read_jsonl(path: str | os.PathLike, what: str = "file") -> list:
    """The JSON values of a jsonl file, as :func:`iter_jsonl` reads them."""
    return [v for _, v in iter_jsonl(path, what)]


def _repair_tail(path: str) -> None:
    """Make ``path`` end with a newline: a complete last line gets one; a torn one is cut off."""
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return
        # Find the start of the last line, reading backwards in blocks.
        start, pos = 0, end
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            block = f.read(step)
            i = block.rfind(b"\n")
            if i >= 0:
                start = pos + i + 1
                break
        f.seek(start)
        tail = f.read()
        try:
            _parse(tail)
        except (ValueError, RecursionError) as e:
            warnings.warn(f"{path!r}: removing the torn last line ({len(tail)} bytes, {_describe(e)}) left by an "
                          f"interrupted run", stacklevel=3)
            f.truncate(start)
            return
        f.seek(end)
        f.write(b"\n")


class JsonlAppender:
    """Append one JSON object per line to ``path``, flushed at once (``truncate`` starts the file
    afresh). A torn last line left by an interrupted run is removed first (with a warning)."""

    def __init__(self, path: str | os.PathLike, truncate: bool = False):
        path = str(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if not truncate and os.path.exists(path):
            _repair_tail(path)
        self.f = open(path, "w" if truncate else "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self.f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
