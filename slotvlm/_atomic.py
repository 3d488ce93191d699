"""Crash-safe writes of a set of files into a folder that also holds other things.

A Slot-VLM folder is written by :meth:`slotvlm.SlotVLM.save_pretrained` (``config.json``,
``connector.safetensors``, ``README.md``), and during training the same folder holds the run's log,
checkpoints and arguments, so the folder cannot simply be replaced by a new one. Instead
:func:`commit_files` is a small two-phase commit:

1. every new file is written into a staging folder ``DIR/.slotvlm-save.<pid>.<n>/`` and fsynced;
2. a ``COMPLETE`` marker listing the files is written and fsynced (the commit point), then the files
   are renamed over their old versions one by one (``os.replace``), the folder is fsynced and the
   staging folder removed.

A ``kill -9`` before the marker exists leaves every old file untouched (the staging folder is
abandoned); after it, the new set is complete in staging + folder together. :func:`recover`, run
by every loader and at the start of every save, finishes the renames of a committed save and
removes abandoned staging folders of processes that are no longer running, so a reader sees the
whole old set or the whole new set, never a mix.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
from typing import Callable

STAGING_PREFIX = ".slotvlm-save."
MARKER = "COMPLETE"
_counter = itertools.count()


def write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def fsync_path(path: str) -> None:
    """fsync a file or a folder (a folder's fsync makes the renames inside it durable)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # e.g. folders cannot be opened on some platforms; nothing more to do there
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on folders
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _roll_forward(directory: str, staging: str, names: list[str]) -> None:
    for name in names:
        try:
            os.replace(os.path.join(staging, name), os.path.join(directory, name))
        except FileNotFoundError:
            pass  # already moved (by the saver, or by a reader that recovered first)
    fsync_path(directory)
    try:
        os.remove(os.path.join(staging, MARKER))
    except FileNotFoundError:
        pass
    shutil.rmtree(staging, ignore_errors=True)


def recover(directory: str) -> None:
    """Finish or discard the interrupted saves into ``directory`` (see the module docstring)."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        if not entry.startswith(STAGING_PREFIX):
            continue
        staging = os.path.join(directory, entry)
        marker = os.path.join(staging, MARKER)
        try:
            with open(marker, encoding="utf-8") as f:
                names = json.load(f)["files"]
        except FileNotFoundError:
            pid = entry[len(STAGING_PREFIX):].split(".")[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(staging, ignore_errors=True)  # abandoned before its commit point
            continue
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a torn marker cannot exist (it is renamed into place); leave anything odd alone
        try:
            _roll_forward(directory, staging, [n for n in names if isinstance(n, str) and os.sep not in n])
        except OSError:
            pass  # a read-only folder: nothing was interrupted there


def commit_files(directory: str, writers: dict[str, Callable[[str], None]]) -> None:
    """Write the files ``{name: writer(path)}`` into ``directory`` as one crash-safe set.

    Each ``writer`` writes its file at the path it is given (inside the staging folder). Files of
    ``directory`` not named here are left alone.
    """
    os.makedirs(directory, exist_ok=True)
    recover(directory)
    staging = os.path.join(directory, f"{STAGING_PREFIX}{os.getpid()}.{next(_counter)}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        for name, write in writers.items():
            path = os.path.join(staging, name)
            write(path)
            fsync_path(path)
        tmp_marker = os.path.join(staging, MARKER + ".tmp")
        with open(tmp_marker, "w", encoding="utf-8") as f:
            json.dump({"files": list(writers)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_marker, os.path.join(staging, MARKER))  # the commit point
        fsync_path(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _roll_forward(directory, staging, list(writers))
