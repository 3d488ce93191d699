"""bench/scan.py runs on CPU: reference providers only, rows with the common CSV columns."""
import csv
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load_bench():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_scan", BENCH / "scan.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_help_explains(capsys):
    with pytest.raises(SystemExit) as exc:
        load_bench().main(["--help"])
    assert exc.value.code == 0
    assert "sequential PyTorch reference" in " ".join(capsys.readouterr().out.split())


def test_cpu_run_appends_rows(tmp_path, capsys):
    bench = load_bench()
    if bench.torch.cuda.is_available():
        pytest.skip("the CPU path is what this test checks")
    out = tmp_path / "rows.csv"
    assert bench.main(["--shapes", "long", "--modes", "fwd", "--csv", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "slotvlm   long fwd: the Triton kernels need a CUDA GPU" in printed
    rows = list(csv.DictReader(out.open()))
    from _common import COLUMNS

    assert list(rows[0]) == COLUMNS
    assert [r["provider"] for r in rows] == ["reference", "parallel"]
    assert all(float(r["ms"]) > 0 and r["mode"] == "fwd" and r["dtype"] == "float32" for r in rows)
