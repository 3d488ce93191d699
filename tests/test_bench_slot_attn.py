"""bench/slot_attn.py on a machine without CUDA: runs the reference providers, says what it
skipped, and appends CSV rows with exactly the agreed columns."""
from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench" / "slot_attn.py"
COLUMNS = "timestamp,commit,device,torch,triton,shape,mode,provider,dtype,ms,tflops,gbps,peak_mem_mb".split(",")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_slot_attn", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_cpu_run_writes_rows_and_says_what_it_skipped(bench, tmp_path, capsys):
    out = tmp_path / "results.csv"
    argv = ["--shapes", "object-discovery", "vlm-fast-varlen", "--modes", "step-fwd", "fwd", "--csv", str(out)]
    assert bench.main(argv) == 0
    assert bench.main(argv[:-2] + ["--csv", str(out), "--providers", "eager"]) == 0  # appends, one header
    text = capsys.readouterr().out
    assert "slotvlm: the Triton kernels need a CUDA GPU" in text
    assert "compile:" in text and "no CUDA GPU" in text
    with out.open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == COLUMNS
    body = [dict(zip(COLUMNS, r)) for r in rows[1:]]
    assert all(len(r) == len(COLUMNS) for r in rows[1:])
    assert {r["provider"] for r in body} <= {"eager", "slot-attention"}
    assert sum(r["provider"] == "eager" for r in body) == 8  # 2 shapes x 2 modes, twice
    assert all(float(r["ms"]) > 0 and r["dtype"] == "float32" for r in body)


def test_cost_formulas(bench):
    s = bench.Shape(P=2, N=10, D=8, K=3, hidden=4)
    assert bench.flops(s, "step-fwd") == 4 * 3 * 20 * 8
    assert bench.flops(s, "step-fwd+bwd") == 3 * bench.flops(s, "step-fwd")
    assert bench.bytes_moved(s, "step-fwd", 2) == 2 * (2 * 20 * 8 + 2 * 2 * 3 * 8)
    v = bench.Shape(P=32, N=300, D=8, K=3, hidden=4, varlen=True)
    lengths = v.lengths()
    assert len(lengths) == 32 and min(lengths) >= 60 and max(lengths) <= 300 and len(set(lengths)) > 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_rows_go_outside_the_checkout_unless_saved(bench, tmp_path, monkeypatch, capsys):
    import _common

    argv = ["--shapes", "object-discovery", "--modes", "step-fwd", "--providers", "eager"]
    scratch, results = tmp_path / "scratch", tmp_path / "results"
    monkeypatch.setenv("SLOTVLM_BENCH_DIR", str(scratch))
    monkeypatch.setattr(_common, "RESULTS", results)  # stands in for bench/results/
    assert bench.main(argv) == 0
    written = list(scratch.glob("*.csv"))
    assert len(written) == 1 and not results.exists()
    assert str(written[0]) in capsys.readouterr().out
    assert bench.main(argv + ["--save"]) == 0
    assert [p.name for p in results.glob("*.csv")] == [written[0].name]
    assert len(list(csv.reader(written[0].open()))) == 2  # header + the one unsaved row
    monkeypatch.delenv("SLOTVLM_BENCH_DIR")
    assert _common.output_dir().name == "slotvlm-bench"
    assert not _common.output_dir().resolve().is_relative_to(BENCH.parent.parent.resolve())
