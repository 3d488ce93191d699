"""The synthetic question kinds that tell the branches apart (issue 16): every answer checked
against the rendered pixels or the scene's timing, the kind map, and answer balance."""
from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from slotvlm.data import synth


def _scenes(n=200, seed=3, seconds=8.0, size=64):
    rng = np.random.default_rng(seed)
    return [synth.make_scene(rng, f"v_synth{i:05d}", seconds, size) for i in range(n)]


def _colour_at(frame, obj, t):
    """Palette name of the pixel at the object's centre (drawn last objects overwrite earlier ones,
    so only objects not covered by a later one are checked)."""
    cx, cy = obj.centre_at(t)
    rgb = frame[int(round(cy)), int(round(cx))].astype(int)
    return min(synth.COLOURS, key=lambda c: np.abs(np.array(synth.COLOURS[c]) - rgb).sum())


def _uncovered(scene, obj, t):
    later = [o for o in scene.objects[scene.objects.index(obj) + 1:] if o.appear <= t]
    cx, cy = obj.centre_at(t)
    return all(np.hypot(*(np.subtract(o.centre_at(t), (cx, cy)))) > 2.2 * o.radius for o in later)


def test_every_kind_has_a_need_a_report_type_and_is_recognised():
    assert set(synth.NEEDS) == set(synth.QTYPE) == set(synth.REPORT_TYPE)
    assert set(synth.NEEDS.values()) == {"object", "event", "both"}
    assert set(synth.REPORT_TYPE.values()) == {"count", "colour", "shape", "direction", "order", "after"}
    seen = set()
    for scene in _scenes(100):
        for kind, q, _ in synth.questions_for(scene):
            assert synth.question_kind(q) == kind, q
            seen.add(kind)
    assert seen == set(synth.NEEDS)
    with pytest.raises(ValueError, match="What is the meaning"):
        synth.question_kind("What is the meaning of life?")


def test_before_answer_is_the_colour_drawn_before_the_change():
    checked = 0
    fps = 4.0
    for scene in _scenes(60):
        frames = synth.render(scene, fps)
        for kind, q, a in synth.extra_questions(scene):
            if kind != "before":
                continue
            obj = next(o for o in scene.objects if q == f"What color is the {o.shape} before it changes?")
            t = obj.appear  # first frame showing the object (appearance times are multiples of 0.01 s)
            i = int(np.ceil(t * fps - 1e-9))
            if i / fps >= obj.change_at or not _uncovered(scene, obj, i / fps):
                continue
            assert _colour_at(frames[i], obj, i / fps) == a
            after = int(np.ceil(obj.change_at * fps - 1e-9))
            if after < len(frames) and _uncovered(scene, obj, after / fps):
                assert _colour_at(frames[after], obj, after / fps) != a  # it really changes
            checked += 1
    assert checked >= 5


def test_which_dir_names_the_only_object_moving_that_way():
    n = 0
    for scene in _scenes(100):
        for kind, q, a in synth.extra_questions(scene):
            if kind != "which_dir":
                continue
            d = q.removeprefix("Which object moves ").rstrip("?")
            movers = [o for o in scene.objects if o.direction == d]
            assert [o.name() for o in movers] == [a]
            (o,) = movers  # the displacement over the clip has the sign of the direction
            (x0, y0), (x1, y1) = o.centre_at(o.appear), o.centre_at(scene.seconds)
            dx, dy = synth.DIRECTIONS[d]
            assert (x1 - x0) * dx + (y1 - y0) * dy > 10
            n += 1
    assert n > 50


def test_order_pair_answers_follow_appearance_and_are_balanced():
    answers = collections.Counter()
    for scene in _scenes(300):
        by_colour = {o.colour: o for o in scene.objects}
        for kind, q, a in synth.extra_questions(scene):
            if kind != "order_pair":
                continue
            words = q.split()
            x, y = by_colour[words[2]], by_colour[words[-2]]
            assert a == ("before" if x.appear < y.appear else "after")
            answers[a] += 1
    total = sum(answers.values())
    assert total > 100 and 0.4 < answers["before"] / total < 0.6, answers


def test_generate_writes_the_kind_of_every_test_question(tmp_path):
    synth.generate(str(tmp_path), 5, seed=2, seconds=3, size=32, fps=1, progress=False)
    q = json.load(open(tmp_path / "qa" / "test_q.json"))
    a = json.load(open(tmp_path / "qa" / "test_a.json"))
    kinds = {x["question_id"]: x["kind"] for x in a}
    assert kinds and all(synth.question_kind(x["question"]) == kinds[x["question_id"]] for x in q)
    assert all(x["type"] == synth.QTYPE[x["kind"]] for x in a)
