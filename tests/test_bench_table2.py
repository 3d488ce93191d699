"""bench/table2.py: the scoring helpers against hand-computed values, and the whole table end to
end in its smoke mode (6 tiny videos, 1 step per stage, 2 seeds; ~15 s of CPU)."""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest

from bench_loader import load_bench_script


def load_bench():
    return load_bench_script("table2")


def test_mean_se_and_score_by_hand():
    b = load_bench()
    m, se = b.mean_se([0.2, 0.4, 0.6])
    assert m == pytest.approx(0.4) and se == pytest.approx(0.2 / math.sqrt(3))
    assert math.isnan(b.mean_se([0.5])[1])
    kinds = {"a": "count", "b": "order_pair", "c": "first", "d": "direction"}
    s = b.score({"a": True, "b": False, "c": True, "d": True}, kinds)
    assert s["all"] == 0.75 and s["count"] == 1.0 and s["order"] == 0.5 and s["direction"] == 1.0
    assert s["needs_object"] == 1.0 and s["needs_event"] == 0.5 and s["needs_both"] == 1.0
    assert math.isnan(s["shape"])


def test_blind_baselines_by_hand():
    b = load_bench()

    class E:
        def __init__(self, q, a):
            self.question, self.answer = q, a

    q1, q2 = "What shape is the red object when it appears?", "What shape is the blue object when it appears?"
    train = [E(q1, "circle"), E(q1, "circle"), E(q2, "square"), E(q2, "triangle"), E(q2, "triangle"),
             E(q1, "square")]
    # per type: triangle 2, circle 2, square 2 -> the first most common ("circle"); per question: q1 circle, q2 triangle
    test = [{"question_id": "x", "question": q1}, {"question_id": "y", "question": q2}]
    answers, kinds = {"x": "circle", "y": "triangle"}, {"x": "shape", "y": "shape"}
    per_type, per_q = b.blind_hits(train, test, answers, kinds)
    assert per_type == {"x": True, "y": False} and per_q == {"x": True, "y": True}


def test_smoke_runs_every_row(tmp_path, capsys):
    b = load_bench()
    assert b.main(["--smoke", "--work", str(tmp_path / "work")]) == 0
    out = capsys.readouterr().out
    csv_path = re.search(r"wrote (\S+table2\.csv),", out).group(1)
    rows = list(csv.DictReader(open(csv_path)))
    runs = [r for r in rows if r["seed"] != "-"]
    assert sorted((r["row"], r["seed"]) for r in runs) == sorted((m, s) for m in b.ROWS for s in ("0", "1"))
    tokens = {r["row"]: int(r["tokens"]) for r in runs}
    assert tokens == {"Slot-VLM": 192, "Slow-only": 64, "Fast-only": 128, "Pooling": 356, "Q-Former": 192,
                      "Slot-VLM (SSM)": 192}
    for r in runs:
        assert 0.0 <= float(r["acc_all"]) <= 1.0 and float(r["train_s"]) > 0 and float(r["infer_ms_per_question"]) > 0
        assert r["label"] == "smoke" and r["steps"] == "1"
    assert {r["row"] for r in rows if r["seed"] == "-"} == set(b.CEILINGS)
    # The rows were trained as described: Slot-VLM's stage 3 starts from stage 1 and both stage-2 branches,
    # the SSM row has a SlotSSM event branch, the Q-Former row Q-Formers.
    work = tmp_path / "work" / "seed0"
    args = json.load(open(work / "slotvlm" / "train_args.json"))
    assert args["stage"] == 3 and [Path(m).name for m in args["model"]] == ["s1", "slow", "fast"]
    assert json.load(open(work / "ssm" / "config.json"))["event_encoder"] == "slot_ssm"
    assert json.load(open(work / "qformer" / "config.json"))["connector"] == "qformer"
    assert json.load(open(work / "pooling" / "train_args.json"))["total_steps"] == 3
    md = (Path(csv_path).parent / "table2.md").read_text()
    assert "| Slot-VLM | 192 |" in md and "reads the true description" in md
    assert (Path(csv_path).parent / "table2.png").stat().st_size > 1000


def test_bad_arguments_are_refused():
    b = load_bench()
    with pytest.raises(SystemExit, match="--steps must be >= 1, got 0"):
        b.main(["--smoke", "--steps", "0"])
    with pytest.raises(SystemExit, match="--jobs must be >= 1, got 0"):
        b.main(["--smoke", "--jobs", "0"])


def test_append_csv_widens_an_older_file(tmp_path):
    load_bench()
    from _common import append_csv

    path = tmp_path / "r.csv"
    append_csv(path, [{"a": 1, "b": 2}], ["a", "b"])
    append_csv(path, [{"a": 3, "b": 4}], ["a", "b"])
    append_csv(path, [{"a": 5, "c": 6}], ["a", "c"])
    rows = list(csv.DictReader(open(path)))
    assert rows == [{"a": "1", "b": "2", "c": ""}, {"a": "3", "b": "4", "c": ""}, {"a": "5", "b": "", "c": "6"}]


def test_parallel_seeds_train_the_same_models(tmp_path):
    """--jobs 2 (one process per seed) gives the rows of --jobs 1, to the digit (1 thread each)."""
    import os
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "bench" / "table2.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    accs = {}
    for jobs in (1, 2):
        out = subprocess.run([sys.executable, str(script), "--smoke", "--jobs", str(jobs), "--work",
                              str(tmp_path / f"w{jobs}")], env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        csv_path = re.search(r"wrote (\S+table2\.csv),", out.stdout).group(1)
        runs = [r for r in csv.DictReader(open(csv_path)) if r["seed"] != "-"]
        accs[jobs] = {(r["row"], r["seed"]): [r[k] for k in r if k.startswith("acc_")] for r in runs}
    load = load_bench()
    assert sorted(accs[2]) == sorted((m, s) for m in load.ROWS for s in ("0", "1"))
    assert accs[2] == accs[1]
