"""The object-discovery trainer (slotvlm discover): learns, evaluates end to end, resumes exactly,
and trains the PyPI slot-attention package in the same harness."""
import json
import os

import numpy as np
import pytest
import torch

from slotvlm.discover import DiscoverConfig, SlotAutoencoder, read_log, train

TINY = dict(batch_size=8, slot_dim=16, mlp_hidden=16, enc_channels=8, enc_layers=2, enc_kernel=3, dec_channels=16,
            dec_layers=2, test_scenes=16, lr=2e-3, warmup=0, figure_scenes=2, progress=False)


def test_trains_loss_falls_and_fg_ari_is_computed(tmp_path):
    from slotvlm.cli import main

    out = tmp_path / "run"
    csv = tmp_path / "rows.csv"
    args = ["discover", "--out", str(out), "--steps", "24", "--eval-every", "12", "--batch-size", "8",
            "--slot-dim", "16", "--mlp-hidden", "16", "--enc-channels", "8", "--enc-layers", "2", "--enc-kernel", "3",
            "--dec-channels", "16", "--dec-layers", "2", "--test-scenes", "16", "--lr", "2e-3", "--warmup", "0",
            "--figure-scenes", "2", "--no-progress", "--csv", str(csv), "--label", "test"]
    assert main(args) == 0
    rows = read_log(str(out))
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 24
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4])  # it learns (the black background first)
    evals = [r for r in rows if "fg_ari" in r]
    assert [r["step"] for r in evals] == [0, 12, 24]
    for r in evals:
        assert -1 <= r["fg_ari"] <= 1 and 0 <= r["mbo"] <= 1 and np.isfinite(r["miou"])
    assert evals[-1]["test_mse"] < evals[0]["test_mse"]
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 24 and result["fg_ari"] == pytest.approx(evals[-1]["fg_ari"])
    assert sorted(os.listdir(out / "figures")) == ["step_000000.png", "step_000012.png", "step_000024.png"]
    header, row = csv.read_text().splitlines()
    assert "fg_ari" in header.split(",") and ",test" in row
    # No pickle anywhere in the checkpoints.
    ckpt = sorted(os.listdir(out / "checkpoints"))[-1]
    assert sorted(os.listdir(out / "checkpoints" / ckpt)) == ["model.safetensors", "optim.safetensors", "state.json"]
    # Reusing the folder without --resume is refused with a one-line error.
    assert main(args) == 2


def test_resume_follows_the_uninterrupted_run(tmp_path):
    full = train(DiscoverConfig(out=str(tmp_path / "full"), steps=6, eval_every=3, **TINY))
    train(DiscoverConfig(out=str(tmp_path / "part"), steps=3, eval_every=3, **TINY))
    part = train(DiscoverConfig(out=str(tmp_path / "part"), steps=6, eval_every=3, resume=True, **TINY))
    a = [r["loss"] for r in read_log(str(tmp_path / "full")) if "loss" in r]
    b = [r["loss"] for r in read_log(str(tmp_path / "part")) if "loss" in r]
    assert a == b
    assert part["fg_ari"] == full["fg_ari"]
    with pytest.raises(ValueError, match="slot_dim"):
        train(DiscoverConfig(out=str(tmp_path / "part"), steps=8, eval_every=3, resume=True, **{**TINY, "slot_dim": 8}))


def test_package_module_in_the_same_harness_starts_identically(tmp_path):
    pytest.importorskip("slot_attention", reason="the PyPI slot-attention package (test extra)")
    ours = DiscoverConfig(out="", backend="torch", **TINY)
    theirs = DiscoverConfig(out="", module="slot-attention", **TINY)
    torch.manual_seed(0)
    a = SlotAutoencoder(ours, 35)
    torch.manual_seed(0)
    b = SlotAutoencoder(theirs, 35)
    assert type(b.slot_attention).__module__.startswith("slot_attention")
    b.load_state_dict(a.state_dict())  # same parameter names: a drop-in
    x = torch.rand(4, 3, 35, 35) * 2 - 1
    torch.manual_seed(1)
    ya = a(x)["recon"]
    torch.manual_seed(1)
    yb = b(x)["recon"]
    torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-5)


def test_bad_config_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="family"):
        DiscoverConfig(out=str(tmp_path), family="clevr").validate()
    with pytest.raises(ValueError, match="enc_kernel"):
        DiscoverConfig(out=str(tmp_path), enc_kernel=4).validate()
    with pytest.raises(ValueError, match="backend"):
        DiscoverConfig(out=str(tmp_path), module="slot-attention", backend="triton").validate()
    with pytest.raises(ValueError, match="slot_init must be 'gaussian' or 'learned', got 'zeros'"):
        DiscoverConfig(out=str(tmp_path), slot_init="zeros").validate()
    with pytest.raises(ValueError, match="slot_init='learned' applies to module='slotvlm' only"):
        DiscoverConfig(out=str(tmp_path), module="slot-attention", slot_init="learned").validate()


def test_learned_slot_init_is_a_trained_query_table(tmp_path):
    """--slot-init learned: the slot attention starts from a per-slot table that training moves,
    and the same scenes give the same slots on every call (no sampling)."""
    cfg = DiscoverConfig(out=str(tmp_path / "run"), steps=6, eval_every=6, slot_init="learned", **TINY).validate()
    model = SlotAutoencoder(cfg, 35)
    assert model.slot_attention.init == "learned"
    assert tuple(model.slot_attention.slots_init.shape) == (cfg.slots, cfg.slot_dim)
    x = torch.rand(2, 3, 35, 35) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(x)["slots"], model(x)["slots"])
    from safetensors.torch import load_file

    train(cfg)
    rows = read_log(cfg.out)
    assert [r["step"] for r in rows if "fg_ari" in r] == [0, 6]
    torch.manual_seed(cfg.seed)  # train() builds its model after seeding: the same starting table
    start = SlotAutoencoder(cfg, 35).slot_attention.slots_init.detach()
    trained = load_file(os.path.join(cfg.out, "model.safetensors"))["slot_attention.slots_init"]
    assert trained.shape == start.shape and not torch.allclose(trained, start)


def test_curve_plot_keeps_steps_up_to_max_step(tmp_path, monkeypatch):
    """bench/object_discovery_plot.py draws every run's curves, cut at --max-step, and names a bad
    --runs entry."""
    import importlib.util

    import matplotlib.axes

    spec = importlib.util.spec_from_file_location(
        "od_plot", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "object_discovery_plot.py")
    )
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    for name, scale in (("ours", 1.0), ("pkg", 0.5)):
        folder = tmp_path / name
        folder.mkdir()
        with open(folder / "log.jsonl", "w", encoding="utf-8") as f:
            for step in range(0, 1001, 100):
                f.write(json.dumps({"step": step, "loss": 1.0 / (1 + step)}) + "\n")
                f.write(json.dumps({"step": step, "fg_ari": scale * step / 1000, "mbo": 0.1}) + "\n")
    drawn = []
    real_plot = matplotlib.axes.Axes.plot

    def spy(self, x, y, *a, **kw):
        drawn.append((kw.get("label"), list(x)))
        return real_plot(self, x, y, *a, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    out = tmp_path / "curves.png"
    assert plot.main(["--runs", f"ours={tmp_path / 'ours'}", f"pkg={tmp_path / 'pkg'}", "--out", str(out),
                      "--max-step", "500", "--paired"]) == 0
    assert out.stat().st_size > 1000
    assert {label for label, _ in drawn} == {"ours", "pkg"}
    assert all(max(x) <= 500 for _, x in drawn) and any(max(x) == 500 for _, x in drawn)
    with pytest.raises(SystemExit, match="LABEL=FOLDER"):
        plot.main(["--runs", str(tmp_path / "ours"), "--out", str(out)])


def test_evaluate_scores_argmax_masks_like_sklearn():
    """``evaluate``'s FG-ARI/ARI are the standard scores of the hard segmentation: scikit-learn's
    ``adjusted_rand_score`` on the argmax-over-slots labels (foreground pixels only for FG-ARI),
    image by image, nan-mean over images. The soft-mask score is reported apart and differs."""
    from sklearn.metrics import adjusted_rand_score

    from slotvlm.data.scenes import generate
    from slotvlm.discover import evaluate, to_input

    images, masks = generate("tetrominoes", 6, seed=3, split="test")[:2]
    torch.manual_seed(0)
    model = SlotAutoencoder(DiscoverConfig(out="unused", **TINY), images.shape[1])
    got = evaluate(model, images, masks, seed=5, batch=4)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(5)
        labels = torch.cat([model.eval()(to_input(images[i:i + 4], "cpu"))["masks"].argmax(1) for i in (0, 4)]).numpy()
    fg, full = [], []
    for t, p in zip(masks, labels):
        keep = t != 0
        fg.append(adjusted_rand_score(t[keep], p[keep]) if keep.any() else np.nan)
        full.append(adjusted_rand_score(t.ravel(), p.ravel()))
    assert got["fg_ari"] == pytest.approx(np.nanmean(fg), abs=1e-9)
    assert got["ari"] == pytest.approx(np.mean(full), abs=1e-9)
    assert abs(got["fg_ari_soft"] - got["fg_ari"]) > 1e-6  # an untrained model's soft masks score otherwise


def test_presets_set_the_recipe_per_family_and_explicit_settings_win(tmp_path):
    from slotvlm.discover import PRESETS

    tetro = DiscoverConfig.from_preset("cpu", "tetrominoes", out="x").validate()
    assert (tetro.enc_layers, tetro.enc_stride, tetro.dec_kernel, tetro.dec_channels, tetro.dec_stride) == (1, 5, 1, 64, 5)
    assert (tetro.lr, tetro.warmup, tetro.decay_half_life, tetro.slot_init) == (1e-3, 100, 10_000, "learned")
    assert SlotAutoencoder(tetro, 35).slot_attention.init == "learned"
    sprites = DiscoverConfig.from_preset("cpu", "multi_dsprites", out="x").validate()
    assert (sprites.family, sprites.enc_stride, sprites.dec_stride) == ("multi_dsprites", 4, 4)
    # the model the preset describes is built with the 7x7 / 16x16 slot-input grids
    assert SlotAutoencoder(tetro, 35).enc_pos.grid.shape[:2] == (7, 7)
    assert SlotAutoencoder(sprites, 64).enc_pos.grid.shape[:2] == (16, 16)
    gpu = DiscoverConfig.from_preset("gpu", "tetrominoes", out="x", slot_dim=None, lr=1e-4)
    assert (gpu.device, gpu.steps, gpu.slot_dim, gpu.lr, gpu.dec_kernel) == ("cuda", 500_000, 64, 1e-4, 5)
    assert PRESETS["gpu"]["tetrominoes"]["lr"] == 4e-4  # the override did not leak into the table
    with pytest.raises(ValueError, match="preset must be one of .*'tpu'"):
        DiscoverConfig.from_preset("tpu")
    with pytest.raises(ValueError, match="unknown DiscoverConfig fields \\['slots_dim'\\]"):
        DiscoverConfig.from_preset("cpu", slots_dim=3)
