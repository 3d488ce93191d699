"""bench/slotssm_task.py: the blink-memory task's sequences against their definition, the three
models (matched sizes, causal), and the smoke run end to end."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import torch

from bench_loader import load_bench_script


def load_bench():
    return load_bench_script("slotssm_task")


def test_make_batch_follows_the_task_definition():
    b = load_bench()
    k, c, t = 4, 8, 20
    x, query, answer = b.make_batch(64, t, objects=k, colours=c, noise=0.0, generator=torch.Generator().manual_seed(0))
    assert x.shape == (64, t, k, k + 1 + c)
    ident = x[..., :k].argmax(-1)
    assert (ident.sort(-1).values == torch.arange(k)).all()  # every object once per frame
    assert (ident != torch.arange(k)).any()  # ... in a shuffled order
    visible = x[..., k] > 0.5
    for i in range(64):
        for obj in range(k):
            frames = (visible[i] & (ident[i] == obj)).nonzero()[:, 0]
            # shown from the first frame, without a gap, and gone by the middle
            assert frames.tolist() == list(range(len(frames))) and 1 <= len(frames) <= t // 2
            colours = {int(x[i, f, s, k + 1:].argmax()) for f, s in ((ident[i] == obj) & visible[i]).nonzero()}
            assert len(colours) == 1  # one colour per object
        # the answer: the colour the queried object showed
        f, slot = ((ident[i] == query[i]) & visible[i]).nonzero()[0]
        assert x[i, f, slot, k + 1:].argmax() == answer[i]
        dark = ~visible[i]
        assert (x[i][dark][:, k:] == 0).all()  # dark tokens carry only the identity
    with pytest.raises(ValueError, match="length must be >= 2, got 1"):
        b.make_batch(2, 1)


@pytest.mark.parametrize("kind", ["SlotSSM", "single-state SSM", "slot transformer"])
def test_models_are_causal_and_matched(kind):
    b = load_bench()
    dims = b.matched_dims(32)
    sizes = [b.n_params(b.TaskModel(m, dims[m])) for m in b.MODELS]
    assert max(sizes) / min(sizes) < 1.1
    torch.manual_seed(0)
    model = b.TaskModel(kind, dims[kind]).eval()
    x, q, _ = b.make_batch(3, 12, generator=torch.Generator().manual_seed(1))
    # The answer after frame 8 does not depend on later frames: run on a prefix and compare.
    with torch.no_grad():
        core_full = model.core(model.embed(x) if kind != "single-state SSM" else model.embed(x.reshape(3, 12, 1, -1)))
        xp = x[:, :8]
        core_pre = model.core(model.embed(xp) if kind != "single-state SSM" else model.embed(xp.reshape(3, 8, 1, -1)))
    torch.testing.assert_close(core_full[:, :8], core_pre, atol=1e-5, rtol=1e-4)
    assert model(x, q).shape == (3, 8)
    if kind == "slot transformer":
        assert not any("A_log" in n for n, _ in model.named_parameters())


def test_smoke_run_writes_every_row(capsys):
    b = load_bench()
    assert b.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    path = re.search(r"wrote (\S+slotssm_task\.csv),", out).group(1)
    rows = list(csv.DictReader(open(path)))
    assert sorted((r["model"], r["length"], r["seed"]) for r in rows) == sorted(
        (m, str(t), str(s)) for m in b.MODELS for t in (8, 16) for s in (0, 1))
    for r in rows:
        assert 0 <= float(r["accuracy"]) <= 1 and float(r["infer_ms_per_sequence"]) > 0
    assert (Path(path).parent / "slotssm_task.png").stat().st_size > 1000
