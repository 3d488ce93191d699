"""Register Slot-VLM with transformers' Auto classes as soon as transformers can take it, without
importing transformers from ``import slotvlm``.

``import slotvlm`` calls :func:`install`. If the transformers modules a registration needs are
already imported, it registers at once; otherwise a meta-path finder watches those modules and
registers right after the last of them has finished executing:

- ``AutoConfig.register("slotvlm", SlotVLMConfig)`` once ``transformers.models.auto.configuration_auto``
  is loaded (imports :mod:`slotvlm.model.config`);
- ``AutoModel.register(SlotVLMConfig, SlotVLM)`` once ``transformers.models.auto.modeling_auto`` is
  loaded (imports :mod:`slotvlm.model.modeling`, whose last lines register both classes, and with it
  ``transformers.modeling_utils`` if nothing has yet).

Either waits while its transformers base module (``configuration_utils``, ``modeling_utils``) is
half-way through its own import, which is when transformers itself loads the Auto modules.

So ``import slotvlm, transformers; transformers.AutoConfig.for_model("slotvlm")`` and
``AutoModel.from_pretrained(folder)`` work in either import order, and ``import slotvlm`` itself
costs only the finder. A registration that fails (a transformers release that moved something) is
reported as a warning and does not break transformers; ``import slotvlm.model.modeling`` still
registers explicitly.
"""
from __future__ import annotations

import importlib
import importlib.abc
import sys
import warnings

# (trigger, dependency, module whose import registers): register once ``trigger`` has finished
# loading and ``dependency`` is not half-way through its own import (then wait for it to finish; if
# it was never imported, the registration imports it).
_HOOKS = (
    ("transformers.models.auto.configuration_auto", "transformers.configuration_utils", "slotvlm.model.config"),
    ("transformers.models.auto.modeling_auto", "transformers.modeling_utils", "slotvlm.model.modeling"),
)
_WATCHED = frozenset(name for hook in _HOOKS for name in hook[:2])
_loaded: set[str] = set()
_done: set[str] = set()


def _register_config() -> None:
    from transformers import AutoConfig  # noqa: PLC0415

    from slotvlm.model.config import SlotVLMConfig  # noqa: PLC0415

    AutoConfig.register("slotvlm", SlotVLMConfig, exist_ok=True)


def _run_ready() -> None:
    for trigger, dependency, target in _HOOKS:
        if target in _done or trigger not in _loaded or _importing(dependency):
            continue
        _done.add(target)
        try:
            if target == "slotvlm.model.config":
                _register_config()
            else:
                importlib.import_module(target)  # registers AutoConfig and AutoModel at its end
        except Exception as exc:  # noqa: BLE001  (never break the user's transformers import)
            warnings.warn(f"slotvlm could not register with transformers' Auto classes ({target}: {exc!r}); "
                          "`import slotvlm.model.modeling` registers explicitly", RuntimeWarning, stacklevel=2)


def _fully_loaded(name: str) -> bool:
    module = sys.modules.get(name)
    return module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False)


def _importing(name: str) -> bool:
    """``name`` has started executing and not finished (it is in ``sys.modules`` half-made)."""
    return name in sys.modules and name not in _loaded and not _fully_loaded(name)


class _Loader(importlib.abc.Loader):
    """Delegates to the real loader; after ``exec_module`` marks the module loaded and registers
    whatever has become possible."""

    def __init__(self, loader, name: str):
        self._loader, self._name = loader, name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _loaded.add(self._name)
        _run_ready()

    def __getattr__(self, attr):  # get_source, get_filename, is_package, ...
        return getattr(self._loader, attr)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _WATCHED or name in _loaded:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, name)
                return spec
        return None


def install() -> None:
    """Register now what transformers already allows; watch for the rest. Idempotent."""
    for name in _WATCHED:
        if _fully_loaded(name):
            _loaded.add(name)
    _run_ready()
    if len(_done) < len(_HOOKS) and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
