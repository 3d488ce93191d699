"""The build and CI plumbing: README ↔ .ci/run, the CMake build of the same sources + C++ tests,
the extension's import, and a light `import slotvlm`."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Quick start.*?```(?:bash|sh)?\n(.*?)```", text, re.S).group(1)
    return [l for l in block.splitlines() if l.strip() and not l.lstrip().startswith("#")]


def test_readme_has_two_quick_start_commands():
    cmds = quick_start_commands()
    assert len(cmds) == 2
    assert "bench/slot_attn.py" in cmds[0]
    assert "[test]" in cmds[1] and "pytest" in cmds[1]
    for cmd in cmds:
        assert "--no-build-isolation" in cmd


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -q torch==2.13.0" in ci
    assert 'test_cmd=$(python3 .ci/readme_test_command.py)' in ci and 'eval "$test_cmd"' in ci
    out = subprocess.run([sys.executable, ".ci/readme_test_command.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == quick_start_commands()[1]


def test_extension_imports_in_a_fresh_process():
    # exactly the line users run: the package must load libtorch before the extension needs it
    code = "import slotvlm, slotvlm._C, torch; print(torch.ops.slotvlm.uniform_indices(5, 2).tolist())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0, 4]"


def test_import_is_light():
    code = "import sys, slotvlm; print(','.join(m for m in ('transformers', 'triton', 'av') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_builds_same_sources_and_cpp_tests_pass(tmp_path):
    env = dict(os.environ)
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(tmp_path), *gen, "-DCMAKE_BUILD_TYPE=Release",
         f"-DPython3_EXECUTABLE={sys.executable}"],
        check=True, capture_output=True, env=env,
    )
    subprocess.run(["cmake", "--build", str(tmp_path), "-j", "2"], check=True, capture_output=True, env=env)
    out = subprocess.run(["ctest", "--test-dir", str(tmp_path), "--output-on-failure"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "100% tests passed" in out.stdout
    # the CMake-built module is a working slotvlm._C too
    built = list(tmp_path.glob("_C*.so"))
    assert len(built) == 1
