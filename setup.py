"""Build script for slotvlm and its C++ extension ``slotvlm._C``.

The extension is compiled against the torch that is already installed, so build without
isolation::

    pip install setuptools wheel ninja
    pip install --no-build-isolation -e .

Sources and flags are listed once, in ``csrc/sources.txt`` and ``csrc/flags.txt``; CMakeLists.txt
reads the same two files.

Environment:
    SLOTVLM_BUILD_CUDA  "auto" (default): build CUDA sources when torch has CUDA and nvcc is found;
                        "1": force (fails if impossible); "0": skip.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - exercised only on machines without torch
    sys.exit(
        "slotvlm: building the C++ extension needs torch installed first, and pip must not hide it "
        "in an isolated build environment. Run:\n"
        "    pip install torch\n"
        "    pip install setuptools wheel ninja\n"
        "    pip install --no-build-isolation -e .\n"
    )


def _read_table(name: str) -> dict[str, list[str]]:
    """Read a ``<kind> <value>`` table from csrc/, skipping comments and blank lines."""
    table: dict[str, list[str]] = {}
    for line in (ROOT / "csrc" / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        kind, value = line.split(None, 1)
        table.setdefault(kind, []).append(value)
    return table


def _want_cuda() -> bool:
    flag = os.environ.get("SLOTVLM_BUILD_CUDA", "auto").strip().lower()
    possible = torch.version.cuda is not None and CUDA_HOME is not None
    if flag in ("0", "false", "no", "off"):
        return False
    if flag in ("1", "true", "yes", "on"):
        if not possible:
            sys.exit(
                f"slotvlm: SLOTVLM_BUILD_CUDA={flag!r} but torch.version.cuda={torch.version.cuda!r} "
                f"and CUDA_HOME={CUDA_HOME!r}; install a CUDA build of torch and the CUDA toolkit, "
                "or set SLOTVLM_BUILD_CUDA=0."
            )
        return True
    if flag != "auto":
        sys.exit(f"slotvlm: SLOTVLM_BUILD_CUDA must be auto, 0 or 1, got {flag!r}")
    return possible


def _extension():
    sources = _read_table("sources.txt")
    flags = _read_table("flags.txt")
    cuda = _want_cuda() and bool(sources.get("cuda"))
    files = sources.get("cpu", []) + (sources.get("cuda", []) if cuda else [])
    compile_args = {"cxx": flags.get("cxx", [])}
    macros = []
    if cuda:
        compile_args["nvcc"] = flags.get("nvcc", [])
        macros.append(("SLOTVLM_WITH_CUDA", None))
    ext_cls = CUDAExtension if cuda else CppExtension
    return ext_cls(
        name="slotvlm._C",
        sources=files,
        include_dirs=[str(ROOT / "csrc")],
        define_macros=macros,
        extra_compile_args=compile_args,
        extra_link_args=flags.get("ld", []),
    )


setup(
    # One top-level import name: slotvlm. The Triton sources sit in the top-level kernels/ folder
    # (design card) and are imported as slotvlm.kernels through the slotvlm/kernels symlink; that
    # folder has no __init__.py, so a checkout's root on sys.path cannot shadow PyPI's `kernels`.
    packages=find_packages(include=["slotvlm", "slotvlm.*"]) + ["slotvlm.kernels"],
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
