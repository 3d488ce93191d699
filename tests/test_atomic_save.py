"""``SlotVLM.save_pretrained`` survives ``kill -9`` at any moment (issue 27): what is left in the folder
loads, and it is the old checkpoint or the new one, never a mix. Also the trainer's checkpoints.

Two kinds of kill points, each a real SIGKILL of a forked child that is saving:
- *every* builtin call of the commit path (the child's profiler hook counts the C calls made from
  ``slotvlm/_atomic.py`` and the writers in ``slotvlm/model/modeling.py``, and kills itself at the
  k-th: k = 1 .. all of them), so each gap between two file operations is hit once;
- random moments (seeded) of a child that saves the two versions alternately, killed by the parent.
Old and new differ in weights *and* in config (``conv_template``), so a mixed folder is caught.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import slotvlm._atomic as atomic
import slotvlm.model.modeling as modeling
from slotvlm.model import SlotVLM, SlotVLMConfig
from slotvlm.testing import make_tiny_slotvlm

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="kills forked children (POSIX only)")

WATCH = {os.path.abspath(atomic.__file__), os.path.abspath(modeling.__file__)}


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """Two savable models (old, new) and the folder contents each one writes."""
    root = tmp_path_factory.mktemp("atomic")
    old = SlotVLM.from_pretrained(make_tiny_slotvlm(root), device="cpu")
    new = SlotVLM.from_pretrained(make_tiny_slotvlm(root, name="model_b", seed=1), device="cpu")
    new.config.conv_template = "vicuna_v1"
    files = {}
    for tag, model in (("old", old), ("new", new)):
        d = root / f"ref_{tag}"
        model.save_pretrained(d)
        files[tag] = {"weights": load_file(d / "connector.safetensors"), "config": (d / "config.json").read_text()}
    assert files["old"]["config"] != files["new"]["config"]
    assert any(not torch.equal(files["old"]["weights"][k], files["new"]["weights"][k]) for k in files["old"]["weights"])
    return {"root": root, "old": old, "new": new, "files": files}


def _fresh_target(versions, name: str):
    """A folder holding the old checkpoint and a file of the user's that no save may touch."""
    target = versions["root"] / name
    shutil.rmtree(target, ignore_errors=True)
    versions["old"].save_pretrained(target)
    (target / "log.jsonl").write_text('{"step": 1}\n')
    return target


def _which(versions, target) -> str:
    """Load what is left (through the real loader path, which recovers first) and name it."""
    cfg = SlotVLMConfig.load(str(target))  # runs slotvlm._atomic.recover
    got = {"weights": load_file(target / "connector.safetensors"), "config": (target / "config.json").read_text(),
           "card": (target / "README.md").read_text()}
    for tag, want in versions["files"].items():
        card = versions[tag].model_card(folder=str(target))  # the card's title is the folder's name
        if got["config"] == want["config"] and got["card"] == card and \
                all(torch.equal(got["weights"][k], v) for k, v in want["weights"].items()):
            assert cfg.conv_template == ("vicuna_v1" if tag == "new" else versions["old"].config.conv_template)
            assert (target / "log.jsonl").read_text() == '{"step": 1}\n'
            assert not [e for e in os.listdir(target) if e.startswith(atomic.STAGING_PREFIX)]
            return tag
    raise AssertionError(f"{target} holds a mix of the two checkpoints")


def _count_ops(limit: int):
    count = [0]

    def hook(frame, event, arg):
        if event == "c_call" and frame.f_code.co_filename in WATCH:
            count[0] += 1
            if count[0] == limit:
                os.kill(os.getpid(), signal.SIGKILL)
    return hook, count


def _child(fn) -> int:
    pid = os.fork()
    if pid == 0:  # the child: save, then leave without running the parent's cleanup
        try:
            fn()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return status


def test_kill_at_every_operation_of_a_save(versions):
    # how many watched calls one save makes (counted in this process, no kill)
    target = _fresh_target(versions, "count")
    hook, count = _count_ops(limit=-1)
    sys.setprofile(hook)
    try:
        versions["new"].save_pretrained(target)
    finally:
        sys.setprofile(None)
    total = count[0]
    assert total >= 20, total
    seen = {}
    for k in range(1, total + 1):
        target = _fresh_target(versions, "kill")

        def save(k=k):
            sys.setprofile(_count_ops(limit=k)[0])
            versions["new"].save_pretrained(target)

        status = _child(save)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (k, status)
        seen[k] = _which(versions, target)
    # before the commit point the old set survives, after it the new one; both happen
    assert set(seen.values()) == {"old", "new"}, seen
    first_new = min(k for k, v in seen.items() if v == "new")
    assert all(v == ("new" if k >= first_new else "old") for k, v in seen.items()), seen
    SlotVLM.from_pretrained(str(target), device="cpu")  # the last survivor loads as a model


def test_kill_at_random_moments_of_repeated_saves(versions):
    rng = random.Random(27)
    tags = []
    for i in range(24):
        target = _fresh_target(versions, "random")
        pid = os.fork()
        if pid == 0:
            try:
                for j in range(10_000):
                    versions["new" if j % 2 == 0 else "old"].save_pretrained(target)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        tags.append(_which(versions, target))
        if i % 8 == 0:
            model = SlotVLM.from_pretrained(str(target), device="cpu")
            want = versions["files"][tags[-1]]["weights"]
            got = model.connector.state_dict()
            assert all(torch.equal(got[k], v) for k, v in want.items())
    assert len(tags) == 24


def test_interrupted_trainer_checkpoint_rename_keeps_the_step(tmp_path):
    """A kill between setting the old ``step_N`` aside and renaming the new one in leaves
    ``step_N.old``, which resume still finds; a ``.tmp`` alone is ignored."""
    from slotvlm.train.trainer import CKPT_DIR, list_checkpoints

    root = tmp_path / CKPT_DIR
    for name in ("step_000010", "step_000020.old", "step_000020.tmp", "step_000030.tmp"):
        (root / name).mkdir(parents=True)
        (root / name / "state.json").write_text("{}")
    assert list_checkpoints(str(tmp_path)) == [str(root / "step_000010"), str(root / "step_000020.old")]
    (root / "step_000020").mkdir()
    (root / "step_000020" / "state.json").write_text("{}")
    assert list_checkpoints(str(tmp_path)) == [str(root / "step_000010"), str(root / "step_000020")]
