"""Security and reliability (issue 11): checkpoints that cannot run code, a judge client that
cannot leak its key or hang, jsonl files that survive a torn last line, bounded C++ ops, API edges,
and the CLI's exit codes (0 done, 1 ran but some items failed, 2 could not run; one line)."""
from __future__ import annotations

import errno
import json
import os
import pickle  # the tests craft malicious files; the package itself never imports this
import re
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from judge_server import Action, JudgeServer, reference_verdict
from slotvlm.cli import main as cli_main
from slotvlm.eval.judge import (
    JudgeConfigError,
    JudgeRequestError,
    OpenAIChatJudge,
    VerdictError,
    build_messages,
    load_verdicts,
    parse_verdict,
    run_judge,
)

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
KEY = "sk-secret-4f9a0c"
MODEL = "judge-pinned-0001"


def preds_rows(n: int) -> list[dict]:
    answers = ["red", "blue", "green"]
    return [{"question_id": f"q{i}", "question": f"colour {i}?", "answer": answers[i % 3],
             "pred": [answers[i % 3], "black"][i % 2]} for i in range(n)]


def expected(rows):
    v = [reference_verdict(r["answer"], r["pred"]) for r in rows]
    return sum(p == "yes" for p, _ in v), sum(p == "no" for p, _ in v)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def one_error_line(err: str, prefix: str) -> str:
    """The one error line of a failed command (progress bars of transformers may precede it)."""
    assert "Traceback" not in err, err[-3000:]
    lines = [x for x in err.strip().splitlines() if x.strip() and "it/s]" not in x]
    assert len(lines) == 1, f"expected one line, got {lines}"
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


# ================================================================================ checkpoints
class _Exploit:
    """Unpickling this creates ``marker``: the side effect a crafted checkpoint would have."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def train_env(tmp_path_factory):
    from slotvlm.data import synth
    from slotvlm.data.features import extract
    from slotvlm.testing import make_tiny_slotvlm

    root = tmp_path_factory.mktemp("ckpt")
    model = make_tiny_slotvlm(root / "tiny")
    synth.generate(str(root / "data"), 4, seed=1, seconds=2, size=64, fps=2, progress=False)
    cache = root / "cache"
    extract(str(root / "data" / "videos"), os.path.join(os.path.dirname(model), "clip"), str(cache),
            progress=False)
    common = dict(stage=3, model=[model], features=str(cache), data=str(root / "data" / "instructions.json"),
                  batch_size=2, max_steps=3, lr=1e-3, save_every=1, progress=False)
    return root, common


def _cut_run(train_env, name):
    from slotvlm.train import TrainConfig, train

    root, common = train_env
    out = root / name
    train(TrainConfig(out=str(out), stop_after=1, **common))
    (ckpt,) = (out / "checkpoints").iterdir()
    return out, ckpt


def test_checkpoint_files_are_safetensors_and_json_only(train_env):
    _, ckpt = _cut_run(train_env, "formats")
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == ["optimizer.json", "optimizer.safetensors", "rng_rank0.json", "rng_rank0.safetensors",
                     "scheduler.json", "state.json", "trainable.safetensors"]
    for p in ckpt.iterdir():  # none of them starts like a pickle / zip (torch.save) stream
        head = p.read_bytes()[:2]
        assert head not in (b"\x80\x02", b"\x80\x04", b"\x80\x05", b"PK"), p.name


@pytest.mark.parametrize("victim", ["optimizer.json", "optimizer.safetensors", "scheduler.json", "rng_rank0.json",
                                    "rng_rank0.safetensors", "trainable.safetensors", "state.json",
                                    "optimizer.pt", "scheduler.pt", "rng_rank0.pt"])
def test_crafted_checkpoint_file_is_never_executed(train_env, tmp_path, victim):
    from slotvlm.train import TrainConfig, train

    out, ckpt = _cut_run(train_env, f"crafted_{victim}")
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit(str(marker)))
    # torch.save's zip format around the payload for the .pt names (what the old code loaded)
    target = ckpt / victim
    if victim.endswith(".pt"):
        stem = victim[:-3]
        for suffix in (".json", ".safetensors"):
            (ckpt / (stem + suffix)).unlink(missing_ok=True)
        torch.save(_Exploit(str(marker)), target)
    else:
        target.write_bytes(payload)
    _, common = train_env
    with pytest.raises(ValueError) as e:
        train(TrainConfig(out=str(out), resume=True, **common))
    assert str(target) in str(e.value)
    assert not marker.exists(), "the crafted file was executed"


def test_corrupt_checkpoint_names_the_file(train_env):
    from slotvlm.train import TrainConfig, train

    out, ckpt = _cut_run(train_env, "corrupt")
    target = ckpt / "optimizer.safetensors"
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])  # truncated by a crash
    _, common = train_env
    with pytest.raises(ValueError, match=re.escape(str(target))):
        train(TrainConfig(out=str(out), resume=True, **common))
    target.unlink()
    (ckpt / "optimizer.json").write_text('{"format": "slotvlm-state-1", "state": {"__tensor__": "99"}}')
    with pytest.raises(ValueError, match=re.escape(str(ckpt / "optimizer.json"))):
        train(TrainConfig(out=str(out), resume=True, **common))


def test_no_unsafe_deserialisation_in_the_package():
    proc = subprocess.run(["grep", "-rn", r"weights_only=False\|pickle", str(ROOT / "slotvlm")],
                          capture_output=True, text=True)
    assert proc.stdout == "", proc.stdout
    for path in (ROOT / "slotvlm").rglob("*.py"):
        assert "torch.load(" not in path.read_text(encoding="utf-8"), path


def test_full_disk_during_checkpoint_leaves_no_tmp_and_says_so(train_env, tmp_path, monkeypatch, capsys):
    import safetensors.torch

    root, common = train_env

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    monkeypatch.setattr(torch, "save", full)  # whichever writer the trainer uses
    out = tmp_path / "full"
    rc = cli_main(["train", "--stage", "3", "--model", *common["model"], "--features", common["features"],
                   "--data", common["data"], "--out", str(out), "--batch-size", "2", "--max-steps", "2",
                   "--save-every", "1", "--no-progress"])
    assert rc == 2
    line = one_error_line(capsys.readouterr().err, "slotvlm train: error:")
    assert "No space left on device" in line and "checkpoint" in line
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


# ================================================================================ judge client
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_redirect_to_another_origin_never_gets_the_key(tmp_path, capsys):
    with JudgeServer() as other:
        target = other.url + "/chat/completions"
        with JudgeServer(lambda q, n: Action(redirect=target, status=302)) as first:
            judge = OpenAIChatJudge(first.url, MODEL, api_key=KEY, timeout=2, max_retries=2, backoff=0.01)
            with pytest.raises(JudgeConfigError, match="redirect"):
                run_judge(preds_rows(2), tmp_path / "a", judge, concurrency=1, progress=False)
            assert first.headers[0]["Authorization"] == f"Bearer {KEY}"
            preds = write_jsonl(tmp_path / "preds.jsonl", preds_rows(2))
            rc = cli_main(["judge", "--preds", str(preds), "--out", str(tmp_path / "b"), "--base-url", first.url,
                           "--judge-model", MODEL, "--no-progress"])
    assert other.requests == [] and other.get_headers == []  # nothing reached the other origin
    assert rc == 2
    err = capsys.readouterr().err
    assert KEY not in err
    one_error_line(err, "slotvlm judge: error:")


def test_trickling_server_is_cut_at_the_total_deadline(tmp_path):
    with JudgeServer() as warm:  # the first request of a process also imports the HTTP stack (~0.3 s)
        OpenAIChatJudge(warm.url, MODEL).complete(build_messages("q", "a", "a"))
    # headers at once, then one byte every 0.25 s: every read succeeds, the reply never ends
    with JudgeServer(lambda q, n: Action(trickle=0.25, reply="{'pred': 'yes', 'score': 5}"), max_seconds=20) as s:
        judge = OpenAIChatJudge(s.url, MODEL, api_key=KEY, timeout=1.0, max_retries=0)
        t0 = time.monotonic()
        with pytest.raises(JudgeRequestError, match="deadline"):
            judge.complete(build_messages("q", "a", "b"))
        assert time.monotonic() - t0 < 2.5
        t0 = time.monotonic()
        res = run_judge(preds_rows(2), tmp_path, OpenAIChatJudge(s.url, MODEL, api_key=KEY, timeout=0.5,
                                                                  max_retries=1, backoff=0.01),
                        concurrency=2, progress=False)
        assert time.monotonic() - t0 < 3.0
    assert res["failed_request"] == 2


def test_refused_connection_ends_the_run_in_seconds(tmp_path, capsys):
    port = _free_port()  # nothing listens there any more
    preds = write_jsonl(tmp_path / "preds.jsonl", preds_rows(20))
    t0 = time.monotonic()
    rc = cli_main(["judge", "--preds", str(preds), "--out", str(tmp_path / "o"), "--base-url",
                   f"http://127.0.0.1:{port}/v1", "--judge-model", MODEL, "--max-retries", "3", "--backoff", "1",
                   "--no-progress"])
    assert time.monotonic() - t0 < 5
    assert rc == 2
    line = one_error_line(capsys.readouterr().err, "slotvlm judge: error:")
    assert "cannot connect" in line and str(port) in line


def test_error_bodies_that_echo_the_key_are_never_shown(tmp_path, capsys):
    echo = json.dumps({"error": {"message": f"bad key {KEY}"}})

    def script(q, n):
        return Action(status=500 if q.endswith("0?") else 400, body=echo)

    preds = write_jsonl(tmp_path / "preds.jsonl", preds_rows(2))
    with JudgeServer(script) as s:
        rc = cli_main(["judge", "--preds", str(preds), "--out", str(tmp_path / "o"), "--base-url", s.url,
                       "--judge-model", MODEL, "--max-retries", "1", "--backoff", "0.01", "--no-progress"])
    assert rc == 3  # finished; the questions were not judged
    out = capsys.readouterr()
    assert KEY not in out.err + out.out
    assert KEY not in (tmp_path / "o" / "verdicts.jsonl").read_text()
    recs = load_verdicts(tmp_path / "o" / "verdicts.jsonl")
    assert "HTTP 500" in recs["q0"]["error"] and "HTTP 400" in recs["q1"]["error"]


# ================================================================================ ambiguous
AMBIGUOUS = ['{"pred": "yes", "score": 5} {"pred": "no", "score": 0}',
             'pred: no. Actually {"pred": "yes", "score": 4}',
             "{'pred': 'yes', 'score': 4} or maybe {'pred': 'yes', 'score': 2}"]


@pytest.mark.parametrize("reply", AMBIGUOUS)
def test_conflicting_verdicts_are_rejected(reply):
    with pytest.raises(VerdictError, match="ambiguous"):
        parse_verdict(reply)


def test_ambiguous_replies_count_as_failed(tmp_path):
    rows = preds_rows(3)
    with JudgeServer(lambda q, n: Action(reply=AMBIGUOUS[0]) if q == rows[1]["question"] else None) as s:
        judge = OpenAIChatJudge(s.url, MODEL, api_key=KEY, timeout=2, max_retries=1, backoff=0.01)
        res = run_judge(rows, tmp_path, judge, max_retries=1, progress=False)
    assert s.asked().count(rows[1]["question"]) == 2  # asked again once, then kept as failed
    assert res["failed"] == res["failed_malformed"] == 1 and res["failed_ids"] == ["q1"]
    yes, no = expected([rows[0], rows[2]])
    assert (res["yes"], res["no"]) == (yes, no)


# ================================================================================ torn lines
def test_torn_last_line_of_the_verdict_cache(tmp_path):
    rows = preds_rows(6)
    with JudgeServer() as s:
        judge = OpenAIChatJudge(s.url, MODEL, api_key=KEY, timeout=2)
        run_judge(rows[:4], tmp_path, judge, progress=False)
        cache = tmp_path / "verdicts.jsonl"
        data = cache.read_bytes()
        last = data[: -1].rfind(b"\n") + 1
        torn = json.loads(data[last:])["question_id"]  # verdicts are written in completion order
        # the last record cut short, inside a two-byte UTF-8 character (a disk-full write)
        cache.write_bytes(data[:last] + b'{"question_id": "' + torn.encode() + b'", "reply": "caf\xc3')
        with pytest.warns(UserWarning, match="torn last line"):
            res = run_judge(rows, tmp_path, judge, progress=False)
        redo = [r["question"] for r in rows if r["question_id"] == torn or r["question_id"] in ("q4", "q5")]
        assert sorted(s.asked()[4:]) == sorted(redo)  # the torn one redone, nothing else
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the file is whole again: no warning, nothing re-asked
            res2 = run_judge(rows, tmp_path, judge, progress=False)
        assert len(s.asked()) == 4 + 3
    yes, no = expected(rows)
    for r in (res, res2):
        assert (r["yes"], r["no"], r["failed"], r["total"]) == (yes, no, 0, 6)
    lines = cache.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(x) for x in lines[:-1])


def test_torn_last_line_of_predictions_is_skipped_with_a_warning(tmp_path):
    rows = preds_rows(5)
    p = tmp_path / "preds.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]) + json.dumps(rows[4])[:20])
    with JudgeServer() as s, pytest.warns(UserWarning, match="torn last line 5"):
        res = run_judge(p, tmp_path / "o", OpenAIChatJudge(s.url, MODEL, api_key=KEY), progress=False)
    yes, no = expected(rows[:4])
    assert (res["yes"], res["no"], res["total"]) == (yes, no, 4)
    p.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]).replace('"q1"', '"q1') + json.dumps(rows[4]))
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):  # a bad line elsewhere is an error
        run_judge(p, tmp_path / "o", OpenAIChatJudge("http://127.0.0.1:9/v1", MODEL), progress=False)


# ================================================================================ C++ ops
def _sample_fps_reference(num_frames, native, target, max_frames):
    """The specification, enumerating every candidate (the pre-issue-11 algorithm)."""
    duration = num_frames / native
    idx, i = [], 0
    while i / target < duration - 1e-9:
        f = min(num_frames - 1, round_half_away(i / target * native))
        if not idx or f > idx[-1]:
            idx.append(f)
        i += 1
    if max_frames and len(idx) > max_frames:
        if max_frames == 1:
            pick = [(len(idx) - 1) // 2]
        else:
            step = (len(idx) - 1) / (max_frames - 1)
            pick = [round_half_away(step * j) for j in range(max_frames)]
        idx = [idx[p] for p in pick]
    return idx


def round_half_away(x: float) -> int:
    return int(x + 0.5) if x >= 0 else -int(-x + 0.5)


@pytest.mark.parametrize("args", [(1000, 25.0, 1.0, 7), (1000, 25.0, 1.0, None), (997, 30000 / 1001, 1.0, 5),
                                  (300, 30.0, 29.97, 11), (301, 2.0, 1.0, 3), (50, 10.0, 10.0, 4),
                                  (123457, 59.94, 2.0, 64), (10, 3.0, 2.0, 1), (90, 24.0, 12.0, 9)])
def test_sample_fps_indices_matches_the_enumerating_specification(args):
    from slotvlm.video import sample_fps_indices

    assert sample_fps_indices(*args).tolist() == _sample_fps_reference(*args)


@pytest.mark.parametrize("call, name", [
    pytest.param(lambda o: o.sample_fps_indices(2**62, 25.0, 1.0, 5), "num_frames", id="fps-2^62"),
    pytest.param(lambda o: o.sample_fps_indices(2**40, 25.0, 1.0, -1), "max_frames", id="fps-unbounded-output"),
    pytest.param(lambda o: o.sample_fps_indices(100, 25.0, 1.0, 2**40), "max_frames", id="fps-max-frames"),
    pytest.param(lambda o: o.segment_midpoints(2**62, 3, False), "num_frames", id="midpoints-2^62"),
    pytest.param(lambda o: o.uniform_indices(2**62, 3, False), "num_frames", id="uniform-2^62"),
    pytest.param(lambda o: o.uniform_indices(10, 2**40, True), "k", id="uniform-k"),
    pytest.param(lambda o: o.segment_midpoints(10, 2**62, True), "k", id="midpoints-k"),
    pytest.param(lambda o: o.slowfast_pool(torch.zeros(1, 2, 4, 4, 8), 2**40, 4), "num_slow", id="pool-2^40"),
    pytest.param(lambda o: o.slowfast_pool(torch.zeros(1, 2, 4, 4, 8), 2**26, 4), "num_slow", id="pool-2^26"),
])
def test_absurd_op_arguments_fail_fast_with_value_error(call, name):
    from slotvlm._ext import ops

    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=name):
        call(ops)
    assert time.perf_counter() - t0 < 0.5  # milliseconds in practice; generous for a loaded CI machine


def test_large_but_representable_frame_counts_are_exact_and_fast():
    from slotvlm.video import sample_fps_indices, segment_midpoints, uniform_indices

    n = 2**47 + 12345
    t0 = time.perf_counter()
    assert segment_midpoints(n, 3).tolist() == [(2 * i + 1) * n // 6 for i in range(3)]  # no overflow
    u = uniform_indices(n, 5).tolist()
    assert u[0] == 0 and u[-1] == n - 1 and u == sorted(set(u))
    got = sample_fps_indices(n, 25.0, 1.0, 5).tolist()  # O(max_frames), not O(n / 25)
    assert time.perf_counter() - t0 < 0.5
    assert got == sorted(set(got)) and got[0] == 0 and 0 <= got[-1] < n
    # the candidates j are the frames nearest to j seconds; the kept ones are 5 of them, uniform
    count = -(-n // 25)  # ceil(n / 25) sample times inside the clip
    picks = [round_half_away((count - 1) / 4 * j) for j in range(5)]
    assert got == [min(n - 1, round_half_away(p / 1.0 * 25.0)) for p in picks]


def test_slowfast_pool_backward_is_registered_with_the_op():
    """In a fresh process that only loads the extension, autograd through the raw op is right."""
    code = (
        "import torch, slotvlm._C\n"
        "from slotvlm.ops.video_ref import slowfast_pool_ref\n"
        "x = torch.randn(2, 5, 4, 4, 3, dtype=torch.float64, requires_grad=True)\n"
        "gs, gf = torch.randn(2, 3, 4, 4, 3, dtype=torch.float64), torch.randn(2, 5, 2, 2, 3, dtype=torch.float64)\n"
        "s, f = torch.ops.slotvlm.slowfast_pool(x, 3, 2)\n"
        "(g,) = torch.autograd.grad((s * gs).sum() + (f * gf).sum(), x)\n"
        "s2, f2 = slowfast_pool_ref(x, 3, 2)\n"
        "(g2,) = torch.autograd.grad((s2 * gs).sum() + (f2 * gf).sum(), x)\n"
        "torch.testing.assert_close(g, g2)\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


# ================================================================================ API edges
def test_slot_attention_dtype_mismatch_and_empty_slots():
    from slotvlm import SlotAttention

    m = SlotAttention(3, 16)
    with pytest.raises(ValueError, match=r"torch\.float64.*torch\.float32"):
        m(torch.randn(2, 5, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"slots have dtype torch\.float64.*torch\.float32"):
        m(torch.randn(2, 5, 16), slots=torch.randn(2, 3, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="K >= 1"):
        m(torch.randn(2, 5, 16), slots=torch.randn(2, 0, 16))
    with pytest.raises(ValueError, match="num_slots"):
        m(torch.randn(2, 5, 16), num_slots=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts per op: allowed
        assert m(torch.randn(2, 5, 16, dtype=torch.bfloat16)).shape == (2, 3, 16)
    assert m.double()(torch.randn(2, 5, 16, dtype=torch.float64)).dtype == torch.float64


# ================================================================================ CLI
def test_negative_numbers_are_rejected_at_parse_time(tmp_path, capsys):
    base = ["judge", "--preds", "p", "--out", str(tmp_path)]
    for flag, value in (("--backoff", "-1"), ("--timeout", "0"), ("--timeout", "nan"), ("--concurrency", "-2"),
                        ("--max-retries", "-1")):
        assert cli_main(base + [flag, value]) == 2
        line = one_error_line(capsys.readouterr().err, "slotvlm judge: error:")
        assert flag in line and value in line
    for cmd in (["train", "--stage", "1", "--model", "m", "--features", "f", "--out", "o", "--lr", "-0.1"],
                ["extract", "--videos", "v", "--out", "o", "--fps", "-1"],
                ["predict", "--model", "m", "--qa", "q", "--out", "o", "--batch-size", "0"]):
        assert cli_main(cmd) == 2
        one_error_line(capsys.readouterr().err, f"slotvlm {cmd[0]}: error:")
    assert not (tmp_path / "verdicts.jsonl").exists()


@pytest.mark.parametrize("case", ["latin1", "nested", "long-int", "id-type", "pred-type", "out-is-a-file"])
def test_bad_judge_inputs_exit_2_with_one_line(tmp_path, capsys, case):
    p = tmp_path / "preds.jsonl"
    good = {"question_id": "q0", "question": "q?", "answer": "a", "pred": "a"}
    out = tmp_path / "o"
    if case == "latin1":
        p.write_bytes(json.dumps(good).encode() + b"\n" + b'{"question_id": "caf\xe9"}\n')
    elif case == "nested":
        p.write_text("[" * 200_000 + "\n")
    elif case == "long-int":
        p.write_text('{"question_id": ' + "9" * 5000 + ', "question": "q", "answer": "a", "pred": "p"}\n')
    elif case == "id-type":
        write_jsonl(p, [good, {**good, "question_id": ["q", 1]}])
    elif case == "pred-type":
        write_jsonl(p, [{**good, "pred": {"text": "a"}}])
    else:
        write_jsonl(p, [good])
        out = tmp_path / "a_file"
        out.write_text("x")
        out = out / "sub"
    rc = cli_main(["judge", "--preds", str(p), "--out", str(out), "--base-url", "http://127.0.0.1:9/v1",
                   "--judge-model", MODEL, "--no-progress"])
    assert rc == 2
    line = one_error_line(capsys.readouterr().err, "slotvlm judge: error:")
    if case != "out-is-a-file":
        assert str(p) in line
    if case == "id-type":
        assert "line 2" in line and "question_id" in line and "list" in line
    if case == "pred-type":
        assert "pred" in line and "dict" in line


@pytest.mark.parametrize("case", ["latin1", "nested", "long-int"])
def test_bad_qa_files_exit_2_naming_the_file(tmp_path, capsys, case):
    qa = tmp_path / "qa.json"
    if case == "latin1":
        qa.write_bytes(b'[{"video_id": "v", "question": "caf\xe9?", "answer": "a", "id": 1}]')
    elif case == "nested":
        qa.write_text("[" * 200_000)
    else:
        qa.write_text('[{"video_id": "v", "question": "q", "answer": "a", "id": ' + "1" * 5000 + "}]")
    rc = cli_main(["predict", "--model", str(tmp_path), "--qa", str(qa), "--videos", str(tmp_path),
                   "--out", str(tmp_path / "p.jsonl"), "--no-progress"])
    assert rc == 2
    assert str(qa) in one_error_line(capsys.readouterr().err, "slotvlm predict: error:")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from slotvlm.testing import make_tiny_slotvlm

    root = tmp_path_factory.mktemp("clip")
    model = make_tiny_slotvlm(root / "tiny")
    return os.path.join(os.path.dirname(model), "clip")


def test_extract_non_utf8_names_and_failures_exit_1(tmp_path, tiny_clip):
    from slotvlm.data import synth
    from slotvlm.data.features import load_features

    synth.generate(str(tmp_path / "data"), 2, seed=4, seconds=2, size=64, fps=2, progress=False)
    src = sorted((tmp_path / "data" / "videos").glob("*.mp4"))[0]
    videos = tmp_path / "videos"
    videos.mkdir()
    odd = os.path.join(os.fsencode(videos), b"v_caf\xe9_\xff.mp4")  # not valid UTF-8
    with open(odd, "wb") as f:
        f.write(src.read_bytes())
    (videos / "v_broken.mp4").write_bytes(b"not a video")
    cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-m", "slotvlm", "extract", "--videos", str(videos), "--vision", tiny_clip,
                           "--out", str(cache), "--no-progress"], env=ENV, capture_output=True, timeout=300)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 3, err[-3000:]
    assert json.loads(proc.stdout.decode().strip().splitlines()[-1])["failed"] == 1
    assert "1 video(s) failed" in err and "Traceback" not in err
    (saved,) = [n for n in os.listdir(os.fsencode(cache)) if n.endswith(b".safetensors")]
    assert saved == b"v_caf\xe9_\xff.safetensors"
    assert load_features(os.fsdecode(os.path.join(os.fsencode(cache), saved)))["slow"].shape[0] == 8


def test_mistyped_local_model_path_exits_2(tmp_path, capsys):
    from slotvlm.data import synth

    synth.generate(str(tmp_path / "data"), 2, seed=5, seconds=1, size=64, fps=2, progress=False)
    rc = cli_main(["extract", "--videos", str(tmp_path / "data" / "videos"), "--vision", str(tmp_path / "no" / "clip"),
                   "--out", str(tmp_path / "cache"), "--no-progress"])
    assert rc == 2
    one_error_line(capsys.readouterr().err, "slotvlm extract: error:")
