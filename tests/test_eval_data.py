"""Evaluation data loaders on small files in each layout, and video lookup."""
from __future__ import annotations

import json

import pytest

from slotvlm.eval.data import (
    VideoIndex,
    find_video,
    load_activitynet_qa,
    load_generative,
    load_qa,
    load_qa_file,
)


def dump(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_activitynet_layout_joined_on_question_id(tmp_path):
    # answers deliberately in another order than the questions
    dump(tmp_path / "test_q.json", [
        {"video_name": "v_abc", "question": "what is the man doing", "question_id": "v_abc_0"},
        {"video_name": "xyz", "question": "is it indoors", "question_id": "xyz_3"},
    ])
    dump(tmp_path / "test_a.json", [
        {"answer": "yes", "type": 3, "question_id": "xyz_3"},
        {"answer": "dancing", "type": 0, "question_id": "v_abc_0"},
    ])
    for source in (tmp_path, tmp_path / "test_q.json"):
        items = load_qa(source)
        assert [(i.question_id, i.video, i.answer, i.type) for i in items] == [
            ("v_abc_0", "v_abc", "dancing", "0"),
            ("xyz_3", "xyz", "yes", "3"),
        ]
    assert items[0].question == "what is the man doing"


def test_activitynet_mismatched_ids(tmp_path):
    q = dump(tmp_path / "q.json", [{"video_name": "a", "question": "?", "question_id": "1"}])
    a = dump(tmp_path / "a.json", [{"answer": "x", "question_id": "2"}])
    with pytest.raises(ValueError, match=r"entry 0 \(question_id '1'\) has no answer"):
        load_activitynet_qa(q, a)
    dump(a, [{"answer": "x", "question_id": "1"}, {"answer": "y", "question_id": "9"}])
    with pytest.raises(ValueError, match=r"answer\(s\) have no question.*'9'"):
        load_activitynet_qa(q, a)


@pytest.mark.parametrize(
    "entry, want",
    [
        pytest.param({"video_id": "vid1", "question": "who?", "answer": "man", "id": 7},
                     ("7", "vid1", "who?", "man"), id="msvd-video_id-id"),
        pytest.param({"video_name": "video7010", "question": "what?", "answer": "cat",
                      "question_id": "q5"}, ("q5", "video7010", "what?", "cat"),
                     id="msrvtt-video_name-question_id"),
        pytest.param({"video_id": "v", "question": "how many?", "answer": 3, "question_id": 0},
                     ("0", "v", "how many?", "3"), id="numeric-answer"),
    ],
)
def test_single_file_layouts(tmp_path, entry, want):
    items = load_qa(dump(tmp_path / "test.json", [entry]))
    assert [(i.question_id, i.video, i.question, i.answer) for i in items] == [want]


@pytest.mark.parametrize(
    "data, match",
    [
        pytest.param({"not": "a list"}, "JSON list", id="not-list"),
        pytest.param([{"video_id": "v", "question": "q", "answer": "a"}], r"entry 0 has no 'question_id' or 'id'",
                     id="no-id"),
        pytest.param([{"video_id": "v", "answer": "a", "id": 1}], r"entry 0 has no 'question'", id="no-question"),
        pytest.param([{"video_id": "v", "question": "q", "answer": "a", "id": 1},
                      {"question": "q", "answer": "a", "id": 2}], r"entry 1 has no 'video_id'", id="no-video"),
        pytest.param([{"video_id": "v", "question": ["q"], "answer": "a", "id": 1}], "expected a string",
                     id="question-list"),
        pytest.param([{"video_id": "v", "question": "q", "answer": "a", "id": 1},
                      {"video_id": "w", "question": "q", "answer": "a", "id": "1"}], "repeats question_id '1'",
                     id="duplicate-id"),
        pytest.param(["just a string"], "entry 0 must be a JSON object", id="not-object"),
    ],
)
def test_malformed_files_name_file_and_entry(tmp_path, data, match):
    path = dump(tmp_path / "bad.json", data)
    with pytest.raises(ValueError, match=match) as e:
        load_qa_file(path)
    assert "bad.json" in str(e.value)


def test_invalid_json_and_missing(tmp_path):
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(ValueError, match="broken.json.*not valid JSON"):
        load_qa(tmp_path / "broken.json")
    with pytest.raises(ValueError, match="does not exist"):
        load_qa(tmp_path / "nope.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="test_q.json and test_a.json"):
        load_qa(tmp_path / "empty")


def test_generative_benchmark_files(tmp_path):
    gen = dump(tmp_path / "generic_qa.json", [
        {"video_name": "v_1", "Q": "Describe the video.", "A": "A dog runs."},
        {"video_name": "v_2", "Q": "What happens?", "A": "Rain."},
    ])
    cons = dump(tmp_path / "consistency_qa.json", [
        {"video_name": "v_3", "Q1": "What colour is the car?", "Q2": "The car is which colour?",
         "A": "Red."},
    ])
    items = load_generative(gen, "temporal")
    assert [(i.question_id, i.video, i.questions, i.answer, i.kind) for i in items] == [
        ("temporal_0", "v_1", ("Describe the video.",), "A dog runs.", "temporal"),
        ("temporal_1", "v_2", ("What happens?",), "Rain.", "temporal"),
    ]
    assert load_generative(gen)[0].kind == "generic"
    c = load_generative(cons)
    assert c[0].kind == "consistency"
    assert c[0].questions == ("What colour is the car?", "The car is which colour?")
    with pytest.raises(ValueError, match=r"consistency_qa.json.*entry 0 has no 'Q'"):
        load_generative(cons, "generic")
    with pytest.raises(ValueError, match="kind must be one of"):
        load_generative(gen, "detail")


def test_video_lookup(tmp_path):
    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    for name in ["v_abc.mkv", "plain.mp4", "sub/nested.WEBM", "clip.part1.avi", "both.mov",
                 "both.mp4", "notes.txt", "v_only.mov"]:
        (root / name).write_bytes(b"")
    idx = VideoIndex(root)
    assert idx.find("v_abc") == str(root / "v_abc.mkv")
    assert idx.find("abc") == str(root / "v_abc.mkv")  # ActivityNet ids without the prefix
    assert idx.find("v_plain") == str(root / "plain.mp4")  # and with a prefix the file lacks
    assert idx.find("plain.mp4") == str(root / "plain.mp4")
    assert idx.find("plain.avi") == str(root / "plain.mp4")  # extension in the file differs
    assert idx.find("nested") == str(root / "sub" / "nested.WEBM")
    assert idx.find("clip.part1") == str(root / "clip.part1.avi")
    assert idx.find("both") == str(root / "both.mp4")  # .mp4 preferred
    assert idx.find("notes") is None and idx.find("missing") is None
    assert idx.find("only") == str(root / "v_only.mov")
    assert find_video(root, "some/dir/plain") == str(root / "plain.mp4")
    assert len(idx) == 6  # distinct videos: both.mov + both.mp4 count once
    with pytest.raises(ValueError, match="videos folder"):
        VideoIndex(tmp_path / "absent")
