"""Training state on disk without any executable serialisation: tensors in safetensors, the rest
in JSON.

``save_state(obj, folder, name)`` writes ``name.json`` (the structure, with every tensor replaced by
a reference) and, when ``obj`` holds tensors, ``name.safetensors``. ``load_state(folder, name)``
rebuilds exactly what was saved: dicts (with int keys), lists, tuples, str/int/float/bool/None,
tensors (dtype, shape and bits) and numpy arrays. Nothing in either file can run code; a file that
is corrupt, crafted or from another program gives a ``ValueError`` naming it.

Python floats go through JSON's shortest round-trip representation, so they come back bit for bit
(``NaN`` and ``±Infinity`` included).
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

_T, _TUPLE, _DICT, _ND = "__tensor__", "__tuple__", "__dict__", "__ndarray__"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, corrupt, or was not written by slotvlm."""


def _encode(obj, tensors: dict, path: str):
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {_T: key}
    if isinstance(obj, np.ndarray):
        return {_ND: str(obj.dtype), "shape": list(obj.shape), "data": obj.ravel().tolist()}
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, tensors, path) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors, path) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, path) for k, v in obj.items()}
        return {_DICT: [[_encode(k, tensors, path), _encode(v, tensors, path)] for k, v in obj.items()]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in {path!r} (only tensors, numbers, strings, "
                    f"lists, tuples and dicts)")


def _decode(obj, tensors, path: str):
    if isinstance(obj, list):
        return [_decode(v, tensors, path) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if _T in obj:
        key = obj[_T]
        if tensors is None or not isinstance(key, str) or key not in tensors:
            raise CheckpointError(f"checkpoint file {path!r} refers to tensor {key!r}, which its "
                                  f".safetensors file does not hold")
        return tensors[key]
    if _TUPLE in obj:
        return tuple(_decode(v, tensors, path) for v in obj[_TUPLE])
    if _DICT in obj:
        return {_decode(k, tensors, path): _decode(v, tensors, path) for k, v in obj[_DICT]}
    if _ND in obj:
        return np.asarray(obj["data"], dtype=np.dtype(obj[_ND])).reshape(obj["shape"])
    return {k: _decode(v, tensors, path) for k, v in obj.items()}


def save_state(obj, folder: str, name: str) -> None:
    """Write ``obj`` as ``folder/name.json`` (+ ``folder/name.safetensors`` when it holds tensors)."""
    from safetensors.torch import save_file  # noqa: PLC0415

    jpath = os.path.join(folder, name + ".json")
    tensors: dict[str, torch.Tensor] = {}
    doc = {"format": "slotvlm-state-1", "state": _encode(obj, tensors, jpath)}
    if tensors:
        save_file(tensors, os.path.join(folder, name + ".safetensors"))
    with open(jpath, "w", encoding="utf-8") as f:
        json.dump(doc, f, allow_nan=True)


def load_state(folder: str, name: str, device=None):
    """What :func:`save_state` wrote (tensors on ``device``, default CPU). ``CheckpointError`` (a
    ``ValueError``) naming the file when it is missing, corrupt or not a slotvlm state file."""
    from safetensors.torch import load_file  # noqa: PLC0415

    jpath = os.path.join(folder, name + ".json")
    spath = os.path.join(folder, name + ".safetensors")
    if not os.path.isfile(jpath):
        legacy = os.path.join(folder, name + ".pt")
        if os.path.exists(legacy):
            raise CheckpointError(
                f"checkpoint file {legacy!r} is in torch.save format, which slotvlm does not load (loading it "
                f"could run code from the file); this checkpoint cannot be resumed, start the run afresh")
        raise CheckpointError(f"checkpoint file {jpath!r} is missing")
    try:
        with open(jpath, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or bad UTF-8
        raise CheckpointError(f"checkpoint file {jpath!r} is corrupt: {type(e).__name__}: {e}"[:500]) from None
    if not isinstance(doc, dict) or doc.get("format") != "slotvlm-state-1" or "state" not in doc:
        raise CheckpointError(f"checkpoint file {jpath!r} is not a slotvlm state file")
    tensors = None
    if os.path.exists(spath):
        try:
            tensors = load_file(spath, device=str(device or "cpu"))
        except Exception as e:  # noqa: BLE001  (safetensors raises its own error types for bad headers)
            raise CheckpointError(f"checkpoint file {spath!r} is corrupt: {type(e).__name__}: {e}"[:500]) from None
    try:
        return _decode(doc["state"], tensors, jpath)
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError, RecursionError) as e:
        raise CheckpointError(f"checkpoint file {jpath!r} is malformed: {type(e).__name__}: {e}"[:500]) from None
