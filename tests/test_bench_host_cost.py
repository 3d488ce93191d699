"""bench/host_cost.py: a reduced run writes one row per (shape, path) with the shared columns, and
the Triton launch stub is in place only while it measures."""
from __future__ import annotations

import csv

from triton.runtime.jit import JITFunction

from bench_loader import load_bench_script


def test_reduced_run_writes_rows_and_restores_triton(tmp_path, capsys):
    host_cost = load_bench_script("host_cost")
    run_before = JITFunction.__dict__.get("run")
    out = tmp_path / "host_cost.csv"
    assert host_cost.main(["--shapes", "tiny", "--calls", "3", "--csv", str(out), "--note", "test"]) == 0
    assert JITFunction.__dict__.get("run") is run_before
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == list(host_cost.PATHS)
    for r in rows:
        assert set(host_cost.COLUMNS) <= set(r) and float(r["us_per_call"]) > 0 and r["note"] == "test"
    assert "custom_op" in capsys.readouterr().out
