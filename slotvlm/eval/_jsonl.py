"""Append-only JSON-lines files that survive being killed mid-write (shared by predict and judge)."""
from __future__ import annotations

import json
import os


def read_jsonl(path: str | os.PathLike, what: str = "file") -> list[dict]:
    """The JSON values of a jsonl file (none when it does not exist). A torn last line — a run
    killed while writing it — is skipped; a bad line elsewhere is a ``ValueError`` naming
    ``what``, the file and the line."""
    path = str(path)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines) and not line.endswith("\n"):
                continue
            raise ValueError(f"{what} {path!r} line {n} is not valid JSON: {line[:200]!r}") from None
    return rows


class JsonlAppender:
    """Append one JSON object per line to ``path``, flushed at once (``truncate`` starts the file
    afresh). After a torn last line the first write starts on a new line."""

    def __init__(self, path: str | os.PathLike, truncate: bool = False):
        path = str(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        torn = False
        if not truncate and os.path.exists(path) and os.path.getsize(path):
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        self.f = open(path, "w" if truncate else "a", encoding="utf-8")
        if torn:
            self.f.write("\n")

    def write(self, row: dict) -> None:
        self.f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
