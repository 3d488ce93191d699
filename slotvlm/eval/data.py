"""Evaluation data: the open-ended video QA sets (MSVD-QA, MSRVTT-QA, ActivityNet-QA), the
Video-ChatGPT generative benchmark files, and finding a question's video on disk.

Layouts understood (see docs/eval.md):

- ActivityNet-QA: ``test_q.json`` = ``[{"video_name", "question", "question_id"}]`` and
  ``test_a.json`` = ``[{"answer", "type", "question_id"}]``, joined on ``question_id``.
- Single-file repackagings of MSVD-QA / MSRVTT-QA:
  ``[{"video_id" | "video_name", "question", "answer", "id" | "question_id"}]``.
- Generative benchmark (generic, temporal, consistency):
  ``[{"video_name", "Q" | ("Q1", "Q2"), "A"}]``.

Every malformed file raises ``ValueError`` naming the file and the entry at fault.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")

# Generative benchmark kinds and the question keys each entry carries.
GENERATIVE_KINDS = {"generic": ("Q",), "temporal": ("Q",), "consistency": ("Q1", "Q2")}


@dataclass(frozen=True)
class QAItem:
    """One open-ended question about one video.

    ``question_id`` is always a string (MSVD/MSRVTT files use ints, ActivityNet strings), ``video``
    the name as written in the file (no directory, extension optional), ``type`` the ActivityNet
    question type when the file gives one.
    """

    question_id: str
    video: str
    question: str
    answer: str
    type: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GenerativeItem:
    """One entry of a Video-ChatGPT generative benchmark file.

    ``questions`` holds one question (generic, temporal) or two phrasings of the same question
    (consistency: ``Q1``, ``Q2``); ``question_id`` is ``"<kind>_<index in file>"``.
    """

    question_id: str
    video: str
    questions: tuple[str, ...]
    answer: str
    kind: str


# ------------------------------------------------------------------------------------ reading


def _read_json_list(path: Path) -> list:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"QA file {str(path)!r} does not exist") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"QA file {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise ValueError(f"QA file {str(path)!r} is nested too deeply to read") from None
    except ValueError as e:  # bad JSON, or an integer too long to convert
        raise ValueError(f"{str(path)!r} is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(data, list):
        raise ValueError(
            f"{str(path)!r} must hold a JSON list of entries, got a {type(data).__name__}"
        )
    return data


def _field(path: Path, i: int, entry, names: Iterable[str], *, kind: str = "str"):
    """The first present key of ``names`` in ``entry`` (entry ``i`` of ``path``), validated."""
    names = tuple(names)
    if not isinstance(entry, dict):
        raise ValueError(f"{str(path)!r}: entry {i} must be a JSON object, got {entry!r:.200}")
    for name in names:
        if name in entry and entry[name] is not None:
            value = entry[name]
            if kind == "id":
                if isinstance(value, bool) or not isinstance(value, (str, int)):
                    raise ValueError(
                        f"{str(path)!r}: entry {i} has {name}={value!r}; expected a string or int"
                    )
                return str(value)
            if not isinstance(value, str):
                raise ValueError(
                    f"{str(path)!r}: entry {i} has {name}={value!r:.200}; expected a string"
                )
            return value
    want = " or ".join(repr(n) for n in names)
    raise ValueError(f"{str(path)!r}: entry {i} has no {want}: {entry!r:.200}")


def _answer(path: Path, i: int, entry: dict) -> str:
    """The ``answer`` of an entry; numbers (counting questions in some files) become strings."""
    value = entry.get("answer")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return _field(path, i, entry, ("answer",))


def _check_unique(path: Path, items: list[QAItem]) -> list[QAItem]:
    seen: dict[str, int] = {}
    for i, it in enumerate(items):
        if it.question_id in seen:
            raise ValueError(
                f"{str(path)!r}: entry {i} repeats question_id {it.question_id!r} "
                f"(first seen at entry {seen[it.question_id]})"
            )
        seen[it.question_id] = i
    return items


def load_activitynet_qa(questions: str | os.PathLike, answers: str | os.PathLike) -> list[QAItem]:
    """ActivityNet-QA layout: ``test_q.json`` + ``test_a.json`` joined on ``question_id``.

    Returns the questions in the order of ``questions``. A question without an answer (or an
    answer without a question) is a ``ValueError`` naming the file and the id.
    """
    qpath, apath = Path(questions), Path(answers)
    qs = _read_json_list(qpath)
    ans = _read_json_list(apath)
    by_id: dict[str, tuple[str, str | None]] = {}
    for i, a in enumerate(ans):
        qid = _field(apath, i, a, ("question_id", "id"), kind="id")
        if qid in by_id:
            raise ValueError(f"{str(apath)!r}: entry {i} repeats question_id {qid!r}")
        text = _answer(apath, i, a)
        typ = a.get("type")
        by_id[qid] = (text, None if typ is None else str(typ))
    items = []
    for i, q in enumerate(qs):
        qid = _field(qpath, i, q, ("question_id", "id"), kind="id")
        if qid not in by_id:
            raise ValueError(
                f"{str(qpath)!r}: entry {i} (question_id {qid!r}) has no answer in {str(apath)!r}"
            )
        answer, typ = by_id.pop(qid)
        items.append(
            QAItem(
                question_id=qid,
                video=_field(qpath, i, q, ("video_name", "video_id", "video")),
                question=_field(qpath, i, q, ("question",)),
                answer=answer,
                type=typ,
            )
        )
    if by_id:
        extra = sorted(by_id)[:5]
        raise ValueError(
            f"{str(apath)!r}: {len(by_id)} answer(s) have no question in {str(qpath)!r}, "
            f"e.g. question_id {extra}"
        )
    return _check_unique(qpath, items)


def load_qa_file(path: str | os.PathLike) -> list[QAItem]:
    """Single-file layout (MSVD-QA / MSRVTT-QA repackagings):
    ``[{"video_id"|"video_name", "question", "answer", "id"|"question_id"}]``.

    Integer answers (counting questions in some repackagings) are turned into strings."""
    path = Path(path)
    items = []
    for i, e in enumerate(_read_json_list(path)):
        qid = _field(path, i, e, ("question_id", "id"), kind="id")
        typ = e.get("type")
        items.append(
            QAItem(
                question_id=qid,
                video=_field(path, i, e, ("video_id", "video_name", "video")),
                question=_field(path, i, e, ("question",)),
                answer=_answer(path, i, e),
                type=None if typ is None else str(typ),
            )
        )
    return _check_unique(path, items)


def load_qa(path: str | os.PathLike) -> list[QAItem]:
    """Load a QA set in whichever layout ``path`` is in.

    ``path`` may be a folder holding ``test_q.json`` + ``test_a.json`` (ActivityNet-QA), the
    ``test_q.json`` file itself (its ``test_a.json`` sibling is read with it), or a single JSON
    file in the MSVD/MSRVTT layout.
    """
    p = Path(path)
    if p.is_dir():
        q, a = p / "test_q.json", p / "test_a.json"
        if q.is_file() and a.is_file():
            return load_activitynet_qa(q, a)
        raise ValueError(
            f"QA folder {str(p)!r} must contain test_q.json and test_a.json "
            f"(ActivityNet-QA layout); pass a single JSON file for other layouts"
        )
    if not p.exists():
        raise ValueError(f"QA path {str(p)!r} does not exist")
    if p.name.endswith("_q.json"):
        a = p.with_name(p.name[: -len("_q.json")] + "_a.json")
        if a.is_file():
            return load_activitynet_qa(p, a)
    return load_qa_file(p)


def load_generative(path: str | os.PathLike, kind: str | None = None) -> list[GenerativeItem]:
    """A Video-ChatGPT generative benchmark file: ``[{"video_name", "Q", "A"}]`` (generic,
    temporal) or ``[{"video_name", "Q1", "Q2", "A"}]`` (consistency).

    ``kind`` is one of ``"generic"``, ``"temporal"``, ``"consistency"``; when None it is guessed
    from the first entry (``Q1``/``Q2`` → consistency, else generic).
    """
    path = Path(path)
    data = _read_json_list(path)
    if kind is None:
        first = data[0] if data and isinstance(data[0], dict) else {}
        kind = "consistency" if "Q1" in first else "generic"
    if kind not in GENERATIVE_KINDS:
        raise ValueError(
            f"kind must be one of {', '.join(map(repr, GENERATIVE_KINDS))}, got {kind!r}"
        )
    keys = GENERATIVE_KINDS[kind]
    items = []
    for i, e in enumerate(data):
        items.append(
            GenerativeItem(
                question_id=f"{kind}_{i}",
                video=_field(path, i, e, ("video_name", "video_id")),
                questions=tuple(_field(path, i, e, (k,)) for k in keys),
                answer=_field(path, i, e, ("A",)),
                kind=kind,
            )
        )
    return items


# ------------------------------------------------------------------------------- video lookup


def _name_variants(name: str) -> list[str]:
    """Stems under which a video may be stored: as written, and with or without ActivityNet's
    ``v_`` prefix."""
    out = [name]
    if name.startswith("v_"):
        out.append(name[2:])
    else:
        out.append("v_" + name)
    return out


class VideoIndex:
    """Find a QA entry's video file in a folder (searched recursively, once).

    A name matches a file when they are equal, or equal after adding one of
    ``.mp4 .mkv .webm .avi .mov`` (any case), and with or without ActivityNet's ``v_`` prefix.

    >>> index = VideoIndex("videos/")            # doctest: +SKIP
    >>> index.find("v_abc123")                    # doctest: +SKIP
    'videos/v_abc123.mkv'
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"videos folder {str(self.root)!r} does not exist or is not a folder")
        self._by_name: dict[str, str] = {}
        self._by_stem: dict[str, str] = {}
        for dirpath, dirs, files in os.walk(self.root):
            dirs.sort()  # deterministic choice when two folders hold the same name
            for fn in sorted(files):
                full = os.path.join(dirpath, fn)
                self._by_name.setdefault(fn, full)
                stem, ext = os.path.splitext(fn)
                if ext.lower() in VIDEO_EXTENSIONS:
                    # Prefer the extension listed first when one video exists in several formats.
                    old = self._by_stem.get(stem)
                    if old is None or _ext_rank(full) < _ext_rank(old):
                        self._by_stem[stem] = full

    def __len__(self) -> int:
        return len(self._by_stem)

    def find(self, name: str) -> str | None:
        """The path of ``name``'s video, or None when there is none."""
        base = os.path.basename(name)
        stem, ext = os.path.splitext(base)
        if ext.lower() in VIDEO_EXTENSIONS:
            if base in self._by_name:
                return self._by_name[base]
        else:  # no extension, or a dot inside the name ("clip.part1")
            stem = base
        for variant in _name_variants(stem):
            if variant in self._by_stem:
                return self._by_stem[variant]
        return None


def _ext_rank(path: str) -> int:
    return VIDEO_EXTENSIONS.index(os.path.splitext(path)[1].lower())


def find_video(root: str | os.PathLike, name: str) -> str | None:
    """One-off lookup of ``name`` under ``root`` (see :class:`VideoIndex` for the rules; build a
    ``VideoIndex`` once when looking up many names)."""
    return VideoIndex(root).find(name)
