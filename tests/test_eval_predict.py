"""`slotvlm predict` on a tiny Slot-VLM and synthetic clips (from `slotvlm synth`): batched greedy
answers, failures recorded, resume after an interruption, rank sharding + merge, the feature-cache
path, and the end-to-end chain predict → judge (against the loopback server of judge_server.py)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter

import pytest

from judge_server import Action, JudgeServer, reference_verdict
from slotvlm.cli import main as cli_main
from slotvlm.eval.data import load_qa
from slotvlm.eval.predict import failures_path, merge_shards, predict, read_jsonl, shard_path

MISSING = "synth_missing_video"
PER_VIDEO = 4


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny Slot-VLM, two synthetic test videos, and an ActivityNet-layout QA set with
    PER_VIDEO questions per video plus two questions about a video that does not exist."""
    from slotvlm.model import SlotVLM
    from slotvlm.testing import make_tiny_slotvlm

    root = tmp_path_factory.mktemp("predict")
    data = root / "data"
    assert cli_main(["synth", str(data), "--videos", "3", "--seconds", "3", "--size", "64",
                     "--fps", "2", "--test-fraction", "0.5", "--seed", "3"]) == 0
    qs = json.loads((data / "qa" / "test_q.json").read_text())
    ans = {a["question_id"]: a for a in json.loads((data / "qa" / "test_a.json").read_text())}
    keep, per = [], {}
    for q in qs:
        per[q["video_name"]] = per.get(q["video_name"], 0) + 1
        if per[q["video_name"]] <= PER_VIDEO:
            keep.append(q)
    assert len(per) == 2 and len(keep) == 2 * PER_VIDEO
    # the missing video last: rank 0 of 2 gets video 1 + the missing one, rank 1 video 2; with
    # batch size 3 the missing video's questions share a batch with answerable ones
    extra = [{"video_name": MISSING, "question": f"What is shown {i}?", "question_id": f"miss_{i}"}
             for i in range(2)]
    keep = keep + extra
    qa = root / "qa"
    qa.mkdir()
    (qa / "test_q.json").write_text(json.dumps(keep))
    (qa / "test_a.json").write_text(json.dumps(
        [ans[q["question_id"]] for q in keep if q["question_id"] in ans]
        + [{"answer": "nothing", "type": 0, "question_id": e["question_id"]} for e in extra]))
    model_dir = make_tiny_slotvlm(root / "m")
    model = SlotVLM.from_pretrained(model_dir, device="cpu")
    return {"root": root, "videos": str(data / "videos"), "qa": str(qa), "model_dir": model_dir,
            "model": model, "items": load_qa(qa)}


@pytest.fixture(scope="module")
def reference(env):
    """An uninterrupted single-process run with batch size 3: the reference predictions."""
    out = str(env["root"] / "ref" / "preds.jsonl")
    stats = predict(env["model"], env["items"], out, videos=env["videos"], batch_size=3,
                    max_new_tokens=6, progress=False)
    merge_shards(out, env["items"])
    return out, stats


def by_id(path):
    return {r["question_id"]: r for r in read_jsonl(path)}


def test_predict_answers_and_records_failures(env, reference):
    out, stats = reference
    assert stats == {"answered": 2 * PER_VIDEO, "skipped": 0, "failed": 2, "total": 2 * PER_VIDEO + 2}
    rows = read_jsonl(out)
    items = {it.question_id: it for it in env["items"]}
    assert [r["question_id"] for r in rows] == [i.question_id for i in env["items"]
                                                if i.video != MISSING]  # QA order
    for r in rows:
        assert list(r) == ["question_id", "video", "question", "answer", "pred"]
        it = items[r["question_id"]]
        assert (r["video"], r["question"], r["answer"]) == (it.video, it.question, it.answer)
        assert isinstance(r["pred"], str)
    fails = read_jsonl(failures_path(out))
    assert [f["question_id"] for f in fails] == ["miss_0", "miss_1"]
    assert all("not found" in f["error"] for f in fails)
    # the same answers as the model's own one-question-at-a-time path (batching changes nothing)
    m = env["model"]
    for r in rows[:: PER_VIDEO - 1]:
        path = os.path.join(env["videos"], f"v_{r['video']}.mp4")
        assert m.answer(path, r["question"], max_new_tokens=6) == r["pred"]


class _StopAfter:
    """Delegates to the model; the generate call after ``k`` raises KeyboardInterrupt and every
    question passed to generate is recorded."""

    def __init__(self, model, k=None):
        self._m, self.k, self.calls, self.asked = model, k, 0, []

    def __getattr__(self, name):
        return getattr(self._m, name)

    def generate(self, embeds, questions, **kw):
        self.calls += 1
        if self.k is not None and self.calls > self.k:
            raise KeyboardInterrupt
        self.asked += list(questions)
        return self._m.generate(embeds, questions, **kw)


def test_resume_after_interrupt_equals_uninterrupted(env, reference, tmp_path):
    out = str(tmp_path / "preds.jsonl")
    first = _StopAfter(env["model"], k=1)
    with pytest.raises(KeyboardInterrupt):
        predict(first, env["items"], out, videos=env["videos"], batch_size=3, max_new_tokens=6,
                progress=False)
    done = by_id(out)
    assert len(done) == 3  # one batch was written before the interrupt
    second = _StopAfter(env["model"])
    stats = predict(second, env["items"], out, videos=env["videos"], batch_size=3,
                    max_new_tokens=6, progress=False)
    assert stats["skipped"] == 3 and stats["answered"] == 2 * PER_VIDEO - 3
    assert len(second.asked) == 2 * PER_VIDEO - 3  # only the rest were generated
    # nothing asked twice: what the second run asked plus what the first had written is exactly
    # the whole set (as a multiset: different videos can share a question text)
    all_questions = Counter(it.question for it in env["items"] if it.video != MISSING)
    assert Counter(second.asked) + Counter(r["question"] for r in done.values()) == all_questions
    merge_shards(out, env["items"])
    assert read_jsonl(out) == read_jsonl(reference[0])  # deterministic, nothing lost or doubled
    # a third run has nothing left but the missing video, which is retried (and fails again)
    third = _StopAfter(env["model"])
    stats = predict(third, env["items"], out, videos=env["videos"], progress=False)
    assert third.asked == [] and stats["failed"] == 2


def test_torn_last_line_is_redone_and_nothing_valid_is_lost(env, reference, tmp_path):
    """A disk-full (or a kill) cut the last line short: the rerun cuts the fragment off, answers
    exactly that question again, and the merged file equals the uninterrupted run (issue 11)."""
    import warnings

    out = tmp_path / "preds.jsonl"
    data = open(reference[0], "rb").read()
    last = data[:-1].rfind(b"\n") + 1
    out.write_bytes(data[: last + (len(data) - last) // 2])  # half of the last record
    torn_id = json.loads(data[last:])["question_id"]
    model = _StopAfter(env["model"])
    with pytest.warns(UserWarning, match="torn last line"):
        stats = predict(model, env["items"], str(out), videos=env["videos"], batch_size=3,
                        max_new_tokens=6, progress=False)
    items = {it.question_id: it for it in env["items"]}
    assert stats["answered"] == 1 and model.asked == [items[torn_id].question]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # whole again: read without a warning
        assert merge_shards(str(out), env["items"])["answered"] == 2 * PER_VIDEO
    assert read_jsonl(out) == read_jsonl(reference[0])


def test_shards_merge_to_the_single_process_output(env, reference, tmp_path):
    out = str(tmp_path / "preds.jsonl")
    for rank in (1, 0):  # in one process, one after the other (torchrun: see the end-to-end test)
        predict(env["model"], env["items"], out, videos=env["videos"], batch_size=2,
                max_new_tokens=6, rank=rank, world_size=2, progress=False)
    shard0, shard1 = by_id(shard_path(out, 0)), by_id(shard_path(out, 1))
    assert shard0 and shard1 and not set(shard0) & set(shard1)
    videos0 = {r["video"] for r in shard0.values()}
    assert not videos0 & {r["video"] for r in shard1.values()}  # a video stays on one rank
    assert merge_shards(out, env["items"]) == {"answered": 2 * PER_VIDEO, "failed": 2}
    assert read_jsonl(out) == read_jsonl(reference[0])
    assert [f["question_id"] for f in read_jsonl(failures_path(out))] == ["miss_0", "miss_1"]
    assert not os.path.exists(shard_path(out, 0)) and not os.path.exists(shard_path(out, 1))


def test_feature_cache_path(env, reference, tmp_path):
    from slotvlm.data.features import extract

    import torch

    cache = str(tmp_path / "cache")
    extract(env["videos"], env["model"].config.vision_model, cache, store_dtype=torch.float32,
            progress=False, max_frames=env["model"].config.max_frames)
    out = str(tmp_path / "preds.jsonl")
    stats = predict(env["model"], env["items"], out, features=cache, batch_size=4,
                    max_new_tokens=6, progress=False)
    assert stats["answered"] == 2 * PER_VIDEO and stats["failed"] == 2
    assert "feature cache" in read_jsonl(failures_path(out))[0]["error"]
    merge_shards(out, env["items"])
    assert read_jsonl(out) == read_jsonl(reference[0])  # fp32 cache: the same answers


def test_corrupt_video_is_a_recorded_failure(env, tmp_path):
    import shutil

    videos = tmp_path / "videos"
    shutil.copytree(env["videos"], videos)
    names = sorted({it.video for it in env["items"] if it.video != MISSING})
    (videos / f"v_{names[0]}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    items = [it for it in env["items"] if it.video in names][: PER_VIDEO + 1]  # 4 corrupt + 1 good
    out = str(tmp_path / "preds.jsonl")
    stats = predict(env["model"], items, out, videos=str(videos), batch_size=8, max_new_tokens=2,
                    progress=False)
    assert stats["answered"] == 1 and stats["failed"] == PER_VIDEO
    fails = read_jsonl(failures_path(out))
    assert {f["video"] for f in fails} == {names[0]} and all(f["error"] for f in fails)
    assert [r["video"] for r in read_jsonl(out)] == [names[1]]


def test_bad_arguments(env, tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        predict(env["model"], env["items"], str(tmp_path / "p"), videos=env["videos"], batch_size=0)
    with pytest.raises(ValueError, match="videos folder"):
        predict(env["model"], env["items"], str(tmp_path / "p"), videos=str(tmp_path / "none"))
    with pytest.raises(ValueError, match="give videos"):
        predict(env["model"], env["items"], str(tmp_path / "p"))


def test_end_to_end_torchrun_predict_then_judge(env, reference, tmp_path):
    """synth QA set → `torchrun --nproc_per_node=2 -m slotvlm predict` → `slotvlm judge`
    (loopback server) → results.json with the counts."""
    preds = str(tmp_path / "preds.jsonl")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "slotvlm", "predict", "--model", env["model_dir"], "--qa", env["qa"],
           "--videos", env["videos"], "--out", preds, "--batch-size", "3", "--max-new-tokens", "6",
           "--device", "cpu", "--no-progress"]
    pypath = os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, cwd=repo, env={**os.environ, "PYTHONPATH": pypath},
                          capture_output=True, text=True, timeout=300)
    # finished with failures (the missing video's questions): rank 0 exits 3; torchrun itself
    # reports any rank's non-zero exit as 1, naming the rank's code
    assert proc.returncode == 1 and "exitcode  : 3" in proc.stderr, proc.stderr[-3000:]
    assert "2 question(s) failed" in proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["ranks"] == 2
    assert read_jsonl(preds) == read_jsonl(reference[0])  # two ranks == one process
    assert [f["question_id"] for f in read_jsonl(failures_path(preds))] == ["miss_0", "miss_1"]
    assert sorted(os.listdir(tmp_path)) == ["preds.jsonl", "preds.jsonl.failures.jsonl"]
    rows = read_jsonl(preds)
    assert len(rows) == 2 * PER_VIDEO
    malformed_q = rows[0]["question"]
    n_malformed = sum(r["question"] == malformed_q for r in rows)  # the text may recur on another video

    def script(question, n):
        if question == malformed_q:
            return Action(reply="I cannot decide.")  # always malformed: counted as failed
        if re.search(r"colou?r", question):
            return Action(reply="{'pred': 'yes', 'score': 4}")
        return None  # the reference judge

    def expected(row):
        if row["question"] == malformed_q:
            return None
        if re.search(r"colou?r", row["question"]):
            return "yes", 4
        return reference_verdict(row["answer"], row["pred"])

    out = tmp_path / "judge"
    with JudgeServer(script) as server:
        rc = cli_main(["judge", "--preds", preds, "--out", str(out), "--base-url", server.url,
                       "--judge-model", "pinned-judge", "--max-retries", "1", "--backoff", "0.01",
                       "--no-progress"])
    assert rc == 3  # finished; the malformed replies were not judged
    verdicts = [expected(r) for r in rows]
    judged = [v for v in verdicts if v is not None]
    res = json.loads((out / "results.json").read_text())
    assert res["yes"] == sum(v == "yes" for v, _ in judged)
    assert res["no"] == sum(v == "no" for v, _ in judged)
    assert res["failed"] == n_malformed and res["total"] == 2 * PER_VIDEO
    assert res["accuracy"] == pytest.approx(res["yes"] / (res["yes"] + res["no"]))
    assert res["score"] == pytest.approx(sum(s for _, s in judged) / len(judged))
    assert res["judge_model"] == "pinned-judge" and res["date"]
    assert server.asked().count(malformed_q) == 2 * n_malformed  # asked once, retried once
    assert "pinned-judge" in (out / "results.md").read_text()
