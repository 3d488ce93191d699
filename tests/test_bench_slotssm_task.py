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
        core_full = model.core(model.embed(x))
        xp = x[:, :8]
        core_pre = model.core(model.embed(xp))
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


# ----------------------------------------------------------------- issue 23: why it stayed at chance
def _train_recall(b, recurrent: bool, steps: int = 400, lr: float = 1e-3) -> float:
    """Train TaskModel("SlotSSM", 32) on one-step recall (T=2: the colour is shown in frame 0 only)
    and return the held-out accuracy (256 fresh sequences; chance 1/8)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = b.TaskModel("SlotSSM", 32)
    for layer in model.core.layers:
        layer.recurrent_encoder = recurrent
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(7)
    for _ in range(steps):
        x, q, y = b.make_batch(32, 2, generator=g)
        loss = F.cross_entropy(model(x, q), y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    with torch.no_grad():
        x, q, y = b.make_batch(256, 2, generator=torch.Generator().manual_seed(99))
        return float((model.eval()(x, q).argmax(-1) == y).float().mean())


def test_slotssm_learns_one_step_recall_with_slots_carried_over_time():
    """The benchmark's recipe (slots carried from frame to frame, lr 1e-3) learns T=2 recall in a
    few hundred steps (measured: 100 % from step 300); the old recipe's parallel-in-time encoder
    (every frame re-bound from the learned table) stays at chance at equal steps (measured 12 %)."""
    b = load_bench()
    assert b.RECURRENT and b.LR == 1e-3
    assert _train_recall(b, recurrent=True) >= 0.9
    assert _train_recall(b, recurrent=False) < 0.3


def _sensitivity(fn, seed: int, T: int = 8) -> float:
    """|d r·out_T / d x_0| / |d r·out_T / d x_{T-1}| for a fixed random readout r (mean abs over the
    batch, tokens and channels): how much the last frame's output depends on the first frame,
    relative to how much it depends on itself."""
    torch.manual_seed(seed)
    x, out = fn(T)
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    (g,) = torch.autograd.grad((out * r).sum(), x)
    per_t = g.abs().mean((0, 2, 3))
    return float(per_t[0] / per_t[-1])


def test_memory_path_at_init_beats_a_plain_mamba_block():
    """At init the last frame's output of the SlotSSM core (1 layer, B=2, T=8, K=4, D=32) depends on
    the first frame with >= 5 % of its dependence on the last frame (measured 0.27-0.95 over 3
    seeds), >= 100x what a plain Mamba-style block gives on the same shapes (the core's own SSM
    branch plus its residual, measured 4e-5 - 1.5e-4: small Δ at init). With the encoder re-binding
    every frame from the table, the core is no better than the plain block (measured 1.5e-4 - 6e-4)."""
    from slotvlm import SlotSSM

    def core(recurrent):
        def fn(T):
            m = SlotSSM(32, 4, num_layers=1, state_dim=8, expand=1, ffn_mult=2, recurrent_encoder=recurrent,
                        backend="torch")
            x = torch.randn(2, T, 4, 32, requires_grad=True)
            return x, m(x)[:, -1]
        return fn

    def mamba_block(T):
        layer = SlotSSM(32, 4, num_layers=1, state_dim=8, expand=1, ffn_mult=2, backend="torch").layers[0]
        z = torch.randn(2, T, 4, 32, requires_grad=True)
        return z, (z + layer.ssm(z, None)[0])[:, -1]

    for seed in range(3):
        block = _sensitivity(mamba_block, seed)
        ours = _sensitivity(core(True), seed)
        assert block < 1e-3
        assert ours >= 0.05 and ours >= 100 * block, (seed, ours, block)
        assert _sensitivity(core(False), seed) < 2e-3


class _Oracle(torch.nn.Module):
    """Reads the queried object's colour from frame 0 (where every object is visible)."""

    def __init__(self, k: int = 4, right: bool = True):
        super().__init__()
        self.k, self.right = k, right
        self.bias = torch.nn.Parameter(torch.zeros(8))

    def forward(self, x, q):
        first = x[:, 0]  # [B, K, F]
        slot = (first[..., : self.k].argmax(-1) == q[:, None]).float().argmax(-1)
        colour = first[torch.arange(len(q)), slot, self.k + 1:].argmax(-1)
        if not self.right:
            colour = (colour + 1) % 8
        return 10 * torch.nn.functional.one_hot(colour, 8).float() + self.bias


def test_curriculum_doubles_the_length_only_when_the_model_is_right():
    b = load_bench()
    tr = b.train_curriculum(_Oracle(), seed=0, steps=100, batch=8, train_length=16, lr=1e-3)
    # running accuracy 1 - 0.9^n reaches 0.95 after 29 perfect steps, at each length
    assert tr["curriculum"] == "4@0 8@29 16@58" and tr["reached_length"] == 16
    tr = b.train_curriculum(_Oracle(right=False), seed=0, steps=60, batch=8, train_length=16, lr=1e-3)
    assert tr["curriculum"] == "4@0" and tr["reached_length"] == 4
    assert b.evaluate(_Oracle(), 64, eval_n=16, batch=8)["accuracy"] == 1.0


def test_step_times_prints_per_frame_times(capsys):
    b = load_bench()
    assert b.main(["--step-times", "--smoke"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"T=\s+8:\s+[\d.]+ ms/step\s+[\d.]+ ms/frame", out) and re.search(r"T=\s+16:", out)
    assert "per-frame time, longest / shortest length:" in out
