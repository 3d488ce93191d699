"""Training pipeline: synthetic data, the feature cache, the three stages (issue 6).

Tiny CLIP + tiny LLaMA from slotvlm.testing; the torchrun runs use 2 CPU processes (gloo).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from slotvlm.data import synth
from slotvlm.data.features import FeatureCache, extract, load_features
from slotvlm.data.instruct import NOISY_MARKER, clean_answer, load_instructions
from slotvlm.train import TrainConfig, read_log, train
from slotvlm.train.trainer import StepData

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _run(cmd, timeout=240):
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _torchrun(*args):
    return _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                 "-m", "slotvlm", *map(str, args), "--no-progress"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from slotvlm.testing import make_tiny_slotvlm

    root = tmp_path_factory.mktemp("tiny")
    return make_tiny_slotvlm(root)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synth.generate(str(out), 6, seed=1, seconds=3, size=64, fps=2, progress=False)
    return out


# ------------------------------------------------------------------------------------------ synth
def _palette_masks(frame):
    """Per palette colour, the boolean mask of pixels nearest to it (within a tolerance)."""
    cols = np.array(list(synth.COLOURS.values()), dtype=np.float32)
    d = np.linalg.norm(frame[..., None, :].astype(np.float32) - cols, axis=-1)  # [H, W, C]
    near = d.argmin(-1)
    ok = d.min(-1) < 60
    return {name: (near == i) & ok for i, name in enumerate(synth.COLOURS)}


def test_synth_is_deterministic_and_answers_match_the_pixels(tmp_path):
    import av

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d, seed in ((a, 5), (b, 5), (c, 6)):
        synth.generate(str(d), 4, seed=seed, seconds=4, size=64, fps=2, progress=False)
    for name in ("instructions.json", "qa/test_q.json", "qa/test_a.json", "meta.json"):
        assert (a / name).read_text() == (b / name).read_text()
    assert (a / "meta.json").read_text() != (c / "meta.json").read_text()
    # Real formats: VideoInstruct ids carry the file's "v_" prefix, ActivityNet-QA names do not.
    instr = json.loads((a / "instructions.json").read_text())
    q, ans = json.loads((a / "qa/test_q.json").read_text()), json.loads((a / "qa/test_a.json").read_text())
    assert set(instr[0]) == {"video_id", "q", "a"} and set(q[0]) == {"video_name", "question", "question_id"}
    assert set(ans[0]) == {"answer", "type", "kind", "question_id"} and [x["question_id"] for x in q] == [x["question_id"] for x in ans]
    assert all((a / "videos" / f"{r['video_id']}.mp4").exists() for r in instr)
    assert all((a / "videos" / f"v_{r['video_name']}.mp4").exists() for r in q)
    assert {r["video_name"] for r in q}.isdisjoint({r["video_id"][2:] for r in instr})  # held-out videos

    # Check answers against the decoded pixels (an independent reading of the video).
    meta = json.loads((a / "meta.json").read_text())
    checked = 0
    for scene in meta["scenes"]:
        with av.open(str(a / "videos" / f"{scene['video_id']}.mp4")) as cont:
            frames = [f.to_ndarray(format="rgb24") for f in cont.decode(video=0)]
        last = _palette_masks(frames[-1])
        qa = synth.questions_for(synth.Scene(scene["video_id"], scene["seconds"], scene["size"],
                                             [synth.SynthObject(**o) for o in scene["objects"]]))
        for kind, question, answer in qa:
            if kind == "count":
                present = sum(int(m.sum() > 20) for m in last.values())
                assert synth.NUMBERS[present] == answer, question
                checked += 1
            if kind == "colour":
                assert last[answer].sum() > 20, question
                checked += 1
            if kind == "direction":
                o = next(o for o in scene["objects"] if question.endswith(f"the {o['shape']} move?"))
                col = o["colour"] if o["new_colour"] is None else o["new_colour"]
                appear = int(np.ceil(o["appear"] * 2))
                m0 = _palette_masks(frames[appear])[o["colour"]]
                m1 = last[col]
                (y0, x0), (y1, x1) = np.argwhere(m0).mean(0), np.argwhere(m1).mean(0)
                dx, dy = x1 - x0, y1 - y0
                seen = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
                assert seen == answer, (question, dx, dy)
                checked += 1
    assert checked >= 8
    # Order questions are well posed: appearances >= 1.5 s apart (1 fps sampling sees them), also in short clips.
    rng = np.random.default_rng(0)
    for seconds in (2.0, 3.0, 8.0):
        for _ in range(50):
            ap = sorted(o.appear for o in synth.make_scene(rng, "x", seconds, 64).objects)
            assert all(b - a >= 1.5 - 1e-9 for a, b in zip(ap, ap[1:])) and ap[-1] <= 0.75 * seconds
    with pytest.raises(ValueError, match="videos"):
        synth.generate(str(tmp_path / "x"), 1)
    with pytest.raises(ValueError, match="size"):
        synth.generate(str(tmp_path / "x"), 4, size=63)


# ------------------------------------------------------------------------------------------ data
def test_instructions_strip_marker_and_skip_missing_videos(tmp_path):
    assert clean_answer(f"a red circle {NOISY_MARKER}") == "a red circle"
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "v_a.safetensors").write_bytes(b"")
    recs = [{"video_id": "v_a", "q": "What?", "a": f"red {NOISY_MARKER}"},
            {"video_id": "v_missing", "q": "Who?", "a": "blue"},
            {"video_name": "a", "question": "Where?", "answer": "left"}, {"foo": 1}]
    (tmp_path / "d.json").write_text(json.dumps(recs))
    ex, stats = load_instructions(str(tmp_path / "d.json"), FeatureCache(str(cache)))
    assert [(e.video_id, e.question, e.answer) for e in ex] == [("v_a", "What?", "red"), ("v_a", "Where?", "left")]
    assert stats == {"records": 4, "missing_video": 1, "bad_record": 1, "marker_stripped": 1}


def test_step_data_partitions_each_global_batch():
    d = StepData(n=23, batch_size=6, world=2, grad_accum=3, seed=4)
    assert d.steps_per_epoch == 3 and d.micro == 1
    for epoch in range(2):
        seen = []
        for s in range(epoch * 3, epoch * 3 + 3):
            parts = [d.micro_batches(s, r) for r in range(2)]
            flat = [i for p in parts for mb in p for i in mb]
            assert len(flat) == 6
            seen += flat
        assert len(set(seen)) == 18  # no example twice in an epoch
    assert d.micro_batches(0, 0) != d.micro_batches(3, 0) or d.order(0) != d.order(1)
    with pytest.raises(ValueError, match="batch_size"):
        StepData(n=23, batch_size=5, world=2, grad_accum=1, seed=0)


def test_reconstruction_masks_padding_in_the_event_branch(tiny):
    from slotvlm.train.objectives import Reconstruction
    from slotvlm.train.trainer import load_model

    model, _ = load_model(TrainConfig(stage=1, model=[tiny], features=".", out="."), torch.device("cpu"))
    obj = Reconstruction(model.connector, ("fast",)).eval()
    g = model.connector.fast_grid
    fast = [torch.randn(3, g, g, 32), torch.randn(5, g, g, 32)]
    both = obj(None, fast)["fast"]
    single = [obj(None, [f])["fast"] for f in fast]
    ref = (single[0] * 3 + single[1] * 5) / 8  # MSE over real tokens only
    torch.testing.assert_close(both, ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ cache
def test_extraction_killed_midway_resumes_without_corruption_or_rework(tiny, tmp_path):
    vids = tmp_path / "videos"
    synth.generate(str(tmp_path), 24, seed=2, seconds=4, size=64, fps=2, progress=False)
    (vids / "v_broken.mp4").write_bytes(b"not a video")
    cache = tmp_path / "cache"
    clip = os.path.join(os.path.dirname(tiny), "clip")
    cmd = [sys.executable, "-m", "slotvlm", "extract", "--videos", str(vids), "--vision", clip, "--out", str(cache),
           "--no-progress"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if cache.exists() and len(list(cache.glob("*.safetensors"))) >= 3:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.safetensors")}
    assert 3 <= len(before) < 24, f"the kill did not land mid-run ({len(before)} files)"
    stats = extract(str(vids), clip, str(cache), batch_size=4, progress=False)
    names = sorted(p.stem for p in vids.glob("*.mp4") if p.stem != "v_broken")
    assert sorted(p.stem for p in cache.glob("*.safetensors")) == names
    assert stats["done"] == 24 - len(before) and stats["skipped"] == len(before) and stats["failed"] == 1
    for p in cache.glob("*.safetensors"):  # nothing corrupt: every file loads, shapes complete
        f = load_features(str(p))
        t = f["fast"].shape[0]
        assert f["slow"].shape == (8, 16, 16, 32) and f["fast"].shape == (t, 4, 4, 32) and t == 4
    assert not list(cache.glob("*.tmp"))
    for name, mtime in before.items():  # nothing extracted twice
        assert (cache / name).stat().st_mtime_ns == mtime
    log = [json.loads(x)["video"] for x in (cache / "extracted.jsonl").read_text().splitlines()]
    assert len(log) == len(set(log))
    fails = [json.loads(x) for x in (cache / "failures.jsonl").read_text().splitlines()]
    # The broken file fails (in the killed run, and again in the rerun: failures are retried).
    assert fails and all(f["video"].endswith("v_broken.mp4") and f["error"] for f in fails)


def test_cached_features_match_the_model_path(tiny, data, tmp_path):
    """The cache holds exactly what SlotVLM would compute from the video itself."""
    from slotvlm.model import SlotVLM

    cache = tmp_path / "cache"
    clip = os.path.join(os.path.dirname(tiny), "clip")
    video = str(data / "videos" / "v_synth00000.mp4")
    extract([video], clip, str(cache), store_dtype=torch.float32, progress=False)
    cached = load_features(str(cache / "v_synth00000.safetensors"))
    model = SlotVLM.from_pretrained(tiny, device="cpu").eval()
    feats = model.vision_features(model.load_video(video))  # [T, 16, 16, 32]
    idx = cached["slow_indices"]
    torch.testing.assert_close(cached["slow"], feats[idx], rtol=1e-5, atol=1e-5)
    pooled = torch.nn.functional.avg_pool2d(feats.permute(0, 3, 1, 2), 4).permute(0, 2, 3, 1)
    torch.testing.assert_close(cached["fast"], pooled, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        a = model.encode_features([feats])
        b = model.encode_features(slow=cached["slow"][None], fast=[cached["fast"]])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ training
def test_training_resumes_exactly(tiny, data, tmp_path):
    cache = tmp_path / "cache"
    clip = os.path.join(os.path.dirname(tiny), "clip")
    extract(str(data / "videos"), clip, str(cache), progress=False)
    common = dict(stage=3, model=[tiny], features=str(cache), data=str(data / "instructions.json"), batch_size=4,
                  grad_accum=2, max_steps=4, lr=1e-3, save_every=2, progress=False)
    train(TrainConfig(out=str(tmp_path / "full"), **common))
    r = train(TrainConfig(out=str(tmp_path / "cut"), stop_after=3, **common))
    assert r["steps"] == 3 and not (tmp_path / "cut" / "connector.safetensors").exists()
    with pytest.raises(ValueError, match="batch_size"):  # a changed recipe is refused, not silently mixed
        train(TrainConfig(out=str(tmp_path / "cut"), resume=True, **{**common, "batch_size": 2}))
    train(TrainConfig(out=str(tmp_path / "cut"), resume=True, **common))
    full, cut = read_log(str(tmp_path / "full")), read_log(str(tmp_path / "cut"))
    assert [x["step"] for x in cut] == [1, 2, 3, 4]
    assert [x["loss"] for x in cut] == [x["loss"] for x in full]
    assert [x["lr"] for x in cut] == [x["lr"] for x in full]
    assert len({x["loss"] for x in full}) > 1
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "full" / "connector.safetensors")), load_file(str(tmp_path / "cut" / "connector.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_pipeline_synth_extract_init_three_stages_under_torchrun(tmp_path, tiny, data):
    from slotvlm.model import SlotVLM

    root = os.path.dirname(tiny)
    cache, init = tmp_path / "cache", tmp_path / "init"
    _torchrun("extract", "--videos", data / "videos", "--vision", os.path.join(root, "clip"), "--out", cache)
    assert len(list(cache.glob("*.safetensors"))) == 6
    _run([sys.executable, "-m", "slotvlm", "init", "--vision", os.path.join(root, "clip"), "--llm",
          os.path.join(root, "llm"), "--out", init, "--slot-dim", "32", "--proj-dim", "32", "--max-frames", "16"])
    s1, s2, s3 = tmp_path / "s1", tmp_path / "s2", tmp_path / "s3"
    _torchrun("train", "--stage", 1, "--model", init, "--features", cache, "--out", s1, "--max-steps", 4,
              "--batch-size", 2)
    log1 = read_log(str(s1))
    assert [x["step"] for x in log1] == [1, 2, 3, 4] and all("mse_slow" in x and "mse_fast" in x for x in log1)
    instr = data / "instructions.json"
    _torchrun("train", "--stage", 2, "--branch", "slow", "--model", s1, "--features", cache, "--data", instr,
              "--out", s2, "--max-steps", 2, "--batch-size", 4)
    _torchrun("train", "--stage", 3, "--model", s1, s2, "--features", cache, "--data", instr, "--out", s3,
              "--max-steps", 2, "--batch-size", 4, "--fsdp")  # the frozen LLM's layers sharded over the 2 ranks
    m2 = SlotVLM.from_pretrained(str(s2), device="cpu")
    assert (m2.config.use_slow, m2.config.use_fast, m2.config.num_tokens) == (True, False, 64)
    m3 = SlotVLM.from_pretrained(str(s3), device="cpu").eval()
    assert m3.config.num_tokens == 192
    # Stage 1 changed the slot attention, stage 2 the object branch + Proj; stage 3 started from both.
    from safetensors.torch import load_file

    w0, w1, w2 = (load_file(str(d / "connector.safetensors")) for d in (init, s1, s2))
    assert not torch.equal(w0["slow_slots.attn.to_q.weight"], w1["slow_slots.attn.to_q.weight"])
    assert torch.equal(w0["proj.weight"], w1["proj.weight"])  # stage 1 leaves the projections alone
    assert not torch.equal(w1["proj.weight"], w2["proj.weight"])
    f = FeatureCache(str(cache)).load("v_synth00000")
    with torch.no_grad():
        emb = m3.encode_features(slow=f["slow"][None].float(), fast=[f["fast"].float()])
    assert emb.shape == (1, 192, 64)
    assert isinstance(m3.generate(emb, ["What color is the circle?"], max_new_tokens=3)[0], str)


def test_list_videos_from_folder_and_list_file(tmp_path):
    from slotvlm.data.features import list_videos

    (tmp_path / "b.mp4").write_bytes(b"")
    (tmp_path / "a.MKV").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert list_videos(str(tmp_path)) == [str(tmp_path / "a.MKV"), str(tmp_path / "b.mp4")]
    (tmp_path / "list.txt").write_text("# train split\nb.mp4\n/abs/c.mp4  # absolute\n\n")
    assert list_videos(str(tmp_path / "list.txt")) == [str(tmp_path / "b.mp4"), "/abs/c.mp4"]
    with pytest.raises(ValueError, match="videos"):
        list_videos(str(tmp_path / "missing"))
