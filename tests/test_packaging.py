"""The project owns exactly one import name, ``slotvlm`` (issue 22).

transformers 5.25 imports Hugging Face's PyPI package ``kernels`` on every model load; slotvlm 0.1
installed a top-level package of the same name, so from a checkout's root every CLIP/LLM load
failed. These tests build the wheel and read its top-level names, and load a tiny saved CLIP from a
subprocess whose cwd is the checkout's root (where the repository's folders come first on sys.path),
with HF ``kernels`` installed, while our Triton kernels import as ``slotvlm.kernels``.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: top-level folders of the repository that hold Python; none may be a regular package (an
#: ``__init__.py`` there would shadow any PyPI package of that name for code run from the root)
PY_FOLDERS = ("kernels", "bench", "tests", "csrc", "docs")


@pytest.mark.slow
def test_wheel_installs_only_slotvlm(tmp_path):
    """``pip wheel`` of the checkout: every file lies under ``slotvlm/`` or its dist-info, the kernels
    are inside as ``slotvlm/kernels/*.py``, and ``top_level.txt`` says ``slotvlm`` alone."""
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
                           "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("slotvlm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"slotvlm"}, sorted(tops)
    (info,) = dist_info
    top_level = zipfile.ZipFile(wheel).read(f"{info}/top_level.txt").decode().split()
    assert top_level == ["slotvlm"]
    kernels = {n for n in names if n.startswith("slotvlm/kernels/")}
    assert {"slotvlm/kernels/slot_attention.py", "slotvlm/kernels/selective_scan.py",
            "slotvlm/kernels/traffic.py"} <= kernels
    assert not any(n.startswith(("kernels/", "bench/", "tests/")) for n in names)


def test_no_top_level_folder_is_a_regular_package():
    for name in PY_FOLDERS:
        assert not (REPO / name / "__init__.py").exists(), (
            f"{name}/__init__.py makes `import {name}` from the checkout's root find this folder "
            f"instead of the PyPI package called {name!r}")


def _hf_kernels_installed() -> bool:
    # by distribution, not find_spec: from the checkout's root find_spec("kernels") finds the
    # repository's kernels/ folder (a namespace portion) when Hugging Face's package is absent
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _hf_kernels_installed(),
                    reason="Hugging Face's `kernels` is not installed (pip install kernels; the oldest-versions "
                           "CI pass removes it: transformers 5.4 cannot use kernels 0.19)")
def test_checkout_root_does_not_shadow_hf_kernels(tmp_path):
    """From the checkout's root (``''`` first on sys.path): ``import kernels`` is Hugging Face's,
    ``transformers.modeling_utils`` imports, a tiny saved CLIP loads through ``from_pretrained``, and
    our kernels import as ``slotvlm.kernels``."""
    from slotvlm.testing import make_tiny_bundle

    make_tiny_bundle(str(tmp_path / "tiny"))
    script = f"""
import json, os, sys
import kernels, transformers.modeling_utils
from kernels import CUDAProperties  # what transformers 5.25 imports on every model load
from transformers import CLIPVisionModel
import slotvlm.kernels.slot_attention as ksa
m = CLIPVisionModel.from_pretrained({str(tmp_path / "tiny" / "clip")!r})
print(json.dumps({{"hf": kernels.__file__, "ours": ksa.__file__, "params": sum(p.numel() for p in m.parameters()),
                  "path0": sys.path[0]}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["path0"] == ""  # -c puts the cwd (the checkout's root) first
    hf = Path(out["hf"]).resolve()  # (CI's venv lives inside the checkout: compare with kernels/ itself)
    assert not hf.is_relative_to((REPO / "kernels").resolve()) and "site-packages" in hf.parts, out["hf"]
    assert Path(out["ours"]).resolve() == (REPO / "kernels" / "slot_attention.py").resolve()
    assert out["params"] > 0
