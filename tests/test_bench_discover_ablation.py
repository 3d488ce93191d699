"""bench/discover_ablation.py: each row is the base recipe plus its change only, and the CPU preset of
`slotvlm discover` is exactly the ablation's dec-mlp64-learned-decay row."""
from __future__ import annotations

import csv

from bench_loader import load_bench_script


def test_rows_change_one_thing_and_the_cpu_preset_is_the_learned_decay_row(tmp_path, monkeypatch):
    b = load_bench_script("discover_ablation")
    from slotvlm.discover import PRESETS

    cpu = PRESETS["cpu"]["tetrominoes"]
    row = {**b.BASE, **b.VARIANTS["dec-mlp64-learned-decay"][1]}
    assert {k: cpu[k] for k in row} == row  # the preset: base + decoder, slot init, lr decay
    monkeypatch.setattr(b.tempfile, "mkdtemp", lambda prefix="": str(tmp_path / prefix))
    assert b.main(["--smoke", "--jobs", "1", "--only", "base", "dec-mlp64-learned-decay", "cpu-preset"]) == 0
    with open(tmp_path / "discover_ablation_" / "object_discovery_ablation.csv") as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"base", "dec-mlp64-learned-decay", "cpu-preset"}
    keys = ("fg_ari", "ari", "fg_ari_soft", "mbo", "miou")
    # same seed, same batches and slot noise: the preset reproduces its row to the digit
    assert [rows["cpu-preset"][k] for k in keys] == [rows["dec-mlp64-learned-decay"][k] for k in keys]
    assert [rows["base"][k] for k in keys] != [rows["dec-mlp64-learned-decay"][k] for k in keys]  # the change is a change
    assert all(int(r["steps"]) == 2 for r in rows.values())
    md = (tmp_path / "discover_ablation_" / "object_discovery_ablation.md").read_text()
    assert "| dec-mlp64-learned-decay |" in md and "Δ vs base" in md
