"""bench/discover_diagnose.py: the data report's ceiling is a valid FG-ARI below 1 (same-colour
touching pieces exist), and the run report reads a `slotvlm discover` folder."""
from __future__ import annotations

from bench_loader import load_bench_script


def test_data_report_and_run_report(tmp_path):
    b = load_bench_script("discover_diagnose")
    d = b.data_report(n=128)
    assert d["background_colours"] == [[0, 0, 0]]
    assert 0 < d["same_colour_touching"] <= d["touching"] <= 1
    assert 0.5 < d["colour_component_fg_ari"] < 1.0

    from slotvlm.discover import DiscoverConfig, train

    cfg = DiscoverConfig.from_preset("cpu", out=str(tmp_path / "run"), steps=2, eval_every=1, test_scenes=8,
                                     figure_scenes=0, progress=False, batch_size=4, slot_dim=8, mlp_hidden=8,
                                     enc_channels=8, dec_channels=8)
    train(cfg)
    r = b.run_report(cfg.out, n=8)
    assert set(r) == {"attention_fg_ari", "attention_mbo", "decoder_fg_ari", "decoder_mbo", "attention_max_weight"}
    assert 0.25 <= r["attention_max_weight"] <= 1.0  # 4 slots: the largest weight is at least 1/4
