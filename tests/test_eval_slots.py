"""`slotvlm eval-slots` on tiny models and the synth ground-truth masks it scores against."""
import json

import numpy as np
import pytest
import torch

from slotvlm.data import synth


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synth.generate(str(out), 5, seed=4, seconds=4, size=64, fps=2, progress=False)
    return out


def test_render_masks_match_the_rendered_pixels(data):
    meta = json.loads((data / "meta.json").read_text())
    for d in meta["scenes"]:
        scene = synth.scene_from_dict(d)
        times = np.arange(8) / 2
        frames = synth.render(scene, fps=2)
        masks = synth.render_masks(scene, times)
        assert masks.shape == (8, 64, 64)
        bg = np.array(synth.BACKGROUND, dtype=np.uint8)
        np.testing.assert_array_equal(masks == 0, (frames == bg).all(-1))  # background = background colour
        for j, t in enumerate(times):
            for i, obj in enumerate(scene.objects):
                px = frames[j][masks[j] == i + 1]
                if len(px):  # every visible pixel of object i has its colour at time t
                    assert (px == synth.COLOURS[obj.colour_at(t)]).all()
                if t < obj.appear:
                    assert len(px) == 0  # absent before it appears
            assert masks[j].max() <= sum(t >= o.appear for o in scene.objects)
        cuts = synth.event_times(scene)
        assert cuts == sorted(cuts) and all(0 < c < scene.seconds for c in cuts)


def test_eval_slots_cli_on_tiny_model(tmp_path, data, capsys):
    from slotvlm.cli import main
    from slotvlm.testing import make_tiny_slotvlm

    model = make_tiny_slotvlm(tmp_path)
    assert main(["eval-slots", "--model", model, "--data", str(data), "--split", "all", "--no-progress",
                 "--out", str(tmp_path / "r.json")]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["videos"] == 5 and res["resolution"] == "frame"
    assert res["object_frames"] == 5 * 8  # t_d = 8 frames per video, each holds an object
    for k in ("object_fg_ari", "object_ari", "object_mbo", "object_miou"):
        assert np.isfinite(res[k]) and -1 <= res[k] <= 1, (k, res[k])
    assert 0 <= res["object_mbo"] <= 1
    assert "event_ari" in res and res["event_videos"] >= 1
    capsys.readouterr()
    # The ground truth downsampled to the patch grid gives a comparable, not identical, number.
    assert main(["eval-slots", "--model", model, "--data", str(data), "--resolution", "patch", "--no-progress"]) == 0
    patch = json.loads(capsys.readouterr().out)
    assert patch["resolution"] == "patch" and patch["videos"] == 1  # test split: 1 of 5 videos
    # Bad input: one line, exit 2, naming the argument.
    assert main(["eval-slots", "--model", model, "--data", str(tmp_path)]) == 2
    assert "meta.json" in capsys.readouterr().err


def test_eval_slots_skips_unreadable_videos_and_exits_3(tmp_path, data, capsys):
    """A missing and a corrupt video are recorded and skipped, the others scored as without them;
    the run exits 3 (finished with failures)."""
    import shutil

    from slotvlm.cli import main
    from slotvlm.testing import make_tiny_slotvlm

    model = make_tiny_slotvlm(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    ids = [d["video_id"] for d in json.loads((data / "meta.json").read_text())["scenes"]]
    (broken / "videos" / f"{ids[1]}.mp4").unlink()
    (broken / "videos" / f"{ids[3]}.mp4").write_bytes(b"not a video at all" * 50)
    assert main(["eval-slots", "--model", model, "--data", str(broken), "--split", "all", "--no-progress"]) == 3
    out = capsys.readouterr()
    res = json.loads(out.out)
    assert res["videos"] == 3 and res["failed"] == 2
    assert [f["video_id"] for f in res["failed_videos"]] == [ids[1], ids[3]]
    assert "missing" in res["failed_videos"][0]["error"] and "2 of 5 video(s)" in out.err
    assert res["object_frames"] == 3 * 8


def test_eval_slots_scores_oracle_masks_perfectly(tmp_path, data, monkeypatch):
    """With the object branch's attention replaced by the ground truth itself, FG-ARI and mBO are 1:
    the frame times, indices and mask alignment are right."""
    from slotvlm.eval import slots as slots_eval
    from slotvlm.model import SlotVLM
    from slotvlm.testing import make_tiny_slotvlm

    model = SlotVLM.from_pretrained(make_tiny_slotvlm(tmp_path), dtype=torch.float32)
    scenes = {s.video_id: s for s in slots_eval._scenes(str(data), "all")}
    current = {}
    import slotvlm.video as video

    real_load = video.load_video

    def spy_load(path, fps, max_frames=None):
        frames, ts = real_load(path, fps=fps, max_frames=max_frames)
        current["scene"] = scenes[path.rsplit("/", 1)[1][:-4]]
        current["ts"] = np.asarray(ts)
        return frames, ts

    def oracle(features, return_attn=False):
        g, n_s = model.config.grid_size, model.config.num_slots_slow
        t = features[0].shape[0]
        idx = torch.linspace(0, t - 1, model.config.num_slow_frames).round().long()
        gt = synth.render_masks(current["scene"], current["ts"][idx.numpy()])
        patches = slots_eval._gt_to_patches(gt, g)  # [t_d, G, G]
        attn = torch.nn.functional.one_hot(patches.flatten(1), n_s).permute(0, 2, 1).float()
        return None, {"slow": attn[None], "slow_indices": idx[None]}

    monkeypatch.setattr(video, "load_video", spy_load)
    monkeypatch.setattr(model, "encode_features", oracle)
    res = slots_eval.evaluate_slots(model, str(data), split="all", resolution="patch", progress=False)
    assert res["object_fg_ari"] == pytest.approx(1.0) and res["object_mbo"] == pytest.approx(1.0)
    assert "event_ari" not in res
