"""bench/gpu_check.py: the reduced --cpu-smoke run goes end to end and leaves everything in one
folder; the measured-vs-model join picks the matching device model."""
from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py"


def _module():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU smoke mode is what this checks")
def test_cpu_smoke_runs_end_to_end_into_one_folder(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=1800, start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = json.loads((out / "steps.json").read_text())
    assert [s["step"] for s in steps] == ["env", "tests (-m cuda)", "tests (GPU files)", "bench", "compile", "traffic"]
    assert all(s["status"] == "ok" for s in steps), steps
    names = {p.name for p in out.iterdir()}
    assert {"env.txt", "tests.log", "bench.log", "compile.log", "traffic.log", "slot_attn.csv", "traffic-model.csv",
            "summary.md", "steps.json"} <= names
    measured = list(csv.DictReader((out / "slot_attn.csv").open()))
    assert {r["provider"] for r in measured} >= {"eager"} and all(float(r["ms"]) > 0 for r in measured)
    model = list(csv.DictReader((out / "traffic-model.csv").open()))
    assert {r["device"] for r in model} == {"H100 (model)", "H200 (model)"}
    assert "skipped" in (out / "tests.log").read_text()  # the GPU tests said why they did not run
    assert "No measured H100/H200 rows" in (out / "summary.md").read_text()


def test_compare_joins_measured_rows_with_the_matching_model(tmp_path):
    gc = _module()
    cols = ["device", "shape", "mode", "provider", "dtype", "ms"]
    with (tmp_path / "slot_attn.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        w.writerow(["NVIDIA H200", "vlm-slow", "fwd+bwd", "eager", "bfloat16", "6.5"])
        w.writerow(["NVIDIA H200", "vlm-slow", "fwd+bwd", "eager", "float32", "9.0"])  # no model row: fp32
        w.writerow(["NVIDIA A100", "vlm-slow", "fwd+bwd", "eager", "bfloat16", "9.0"])  # no model of an A100
    with (tmp_path / "traffic-model.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        w.writerow(["H100 (model)", "vlm-slow", "fwd+bwd", "eager", "bfloat16", "7.0"])
        w.writerow(["H200 (model)", "vlm-slow", "fwd+bwd", "eager", "bfloat16", "5.0"])
    (row,) = gc.compare(tmp_path)
    assert row["device"] == "NVIDIA H200" and row["model_ms"] == "5.0000" and row["measured_over_model"] == "1.30"
