"""bench/table2_gates.py: the reader's tokenizer, the feature probe on data with a known answer,
and the whole script end to end in its smoke mode (10 tiny videos, 3 reader steps)."""
from __future__ import annotations

import csv
import re

import torch

from bench_loader import load_bench_script


def load_bench():
    return load_bench_script("table2_gates")


def test_reader_tokenizer_gives_every_scene_word_one_token():
    b = load_bench()
    from slotvlm.data import synth
    from slotvlm.testing import make_tiny_tokenizer

    scenes = b.text_scenes(50, 8.0)
    tok = make_tiny_tokenizer(vocab_size=1000, corpus=b.reader_corpus(scenes))
    words = [*synth.COLOURS, *synth.SHAPES, *synth.DIRECTIONS, *synth.NUMBERS[1:4]]
    for w in words:
        assert len(tok(" " + w, add_special_tokens=False).input_ids) == 1, w
    # the default tokenizer (no corpus) splits them: the corpus is what makes the difference
    plain = make_tiny_tokenizer()
    assert any(len(plain(" " + w, add_special_tokens=False).input_ids) > 1 for w in words)


def test_text_scenes_are_reproducible_and_not_the_test_videos():
    b = load_bench()
    a, c = b.text_scenes(5, 8.0), b.text_scenes(5, 8.0)
    assert [s.objects for s in a] == [s.objects for s in c]
    assert all(s.video_id.startswith("v_text") for s in a)


def test_probe_reads_a_planted_attribute_and_not_noise():
    b = load_bench()
    g = torch.Generator().manual_seed(0)
    v, p, c = 200, 16, 8
    y = torch.randint(3, (v,), generator=g)
    x = torch.randn(v, p, c, generator=g)
    x[torch.arange(v), torch.randint(p, (v,), generator=g), y] += 6.0  # one position of each row says the class
    _, held_out = b.probe(x, y, 150, steps=300)
    assert held_out >= 0.9
    _, chance = b.probe(torch.randn(v, p, c, generator=g), y, 150, steps=300)
    assert chance < 0.6


def test_smoke_writes_both_gates(capsys):
    b = load_bench()
    assert b.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    path = re.search(r"wrote (\S+table2_gates\.csv),", out).group(1)
    rows = list(csv.DictReader(open(path)))
    assert {r["what"] for r in rows if r["gate"] == "feature"} == set(b.ATTRIBUTES)
    assert {"all", "colour", "count"} <= {r["what"] for r in rows if r["gate"] == "reader"}
    for r in rows:
        assert 0.0 <= float(r["accuracy"]) <= 1.0 and r["passed"] in ("True", "False")


def test_packed_lessons_compute_each_question_as_its_single_turn_prompt(tmp_path):
    """A description with several questions packed behind it gives, for every question, the
    tokens and the logits of that question's own single-turn prompt (one description read once)."""
    b = load_bench()
    from dataclasses import asdict

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slotvlm.conversation import VIDEO_TOKEN, get_template
    from slotvlm.testing import make_tiny_llm
    from train_synth import caption

    scenes = b.text_scenes(3, 8.0)
    make_tiny_llm(tmp_path, seed=0, corpus=b.reader_corpus(scenes), vocab_size=1000)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    llm = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    conv = get_template("vicuna_v1")
    items = [b.encode_packed(tok, s) for s in scenes]
    for s, (prefix, segs) in zip(scenes, items):
        qas = b.synth.questions_for(s)
        assert len(segs) == len(qas) >= 4
        for (_, q, a), (x, y) in zip(qas, segs):
            prompt = conv.prompt(q).replace(VIDEO_TOKEN, caption(asdict(s)))
            whole = tok(prompt + " " + a, add_special_tokens=True).input_ids + [tok.eos_token_id]
            assert prefix + x == whole  # the reply is split as in the whole turn
            assert tok.decode([t for t in y if t != -100], skip_special_tokens=True).strip() == a
    items = [(p, segs[:4]) for p, segs in items]
    ids, lab, allow, pos = b.packed_batch(items, tok.pad_token_id)
    with torch.no_grad():
        packed = llm(input_ids=ids, attention_mask=allow, position_ids=pos).logits
        for j, (prefix, segs) in enumerate(items):
            o = len(prefix)
            for x, _ in segs:
                alone = llm(input_ids=torch.tensor([prefix + x])).logits[0, len(prefix):]
                torch.testing.assert_close(packed[j, o : o + len(x)], alone, atol=1e-4, rtol=1e-4)
                o += len(x)
    # the mask really separates the questions: letting one see the one before changes its logits
    leaky = allow.clone()
    m, k, k2 = len(items[0][0]), len(items[0][1][0][0]), len(items[0][1][1][0])
    leaky[0, 0, m + k : m + k + k2, m : m + k] = True
    with torch.no_grad():
        other = llm(input_ids=ids, attention_mask=leaky, position_ids=pos).logits
    assert not torch.allclose(other[0, m + k : m + k + k2], packed[0, m + k : m + k + k2], atol=1e-4)


def test_copy_lesson_asks_for_the_description_and_is_answered_with_it(tmp_path):
    """``copy=True`` puts "Repeat the description." first, labelled with exactly the description
    (then </s>); the question segments behind it are those of ``copy=False``, unchanged."""
    b = load_bench()
    from dataclasses import asdict

    from transformers import AutoTokenizer

    from slotvlm.testing import make_tiny_llm
    from train_synth import caption

    scenes = b.text_scenes(2, 8.0)
    make_tiny_llm(tmp_path, seed=0, corpus=b.reader_corpus(scenes), vocab_size=1000)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    for s in scenes:
        prefix, segs = b.encode_packed(tok, s)
        prefix_c, segs_c = b.encode_packed(tok, s, copy=True)
        assert prefix_c == prefix and segs_c[1:] == segs and len(segs_c) == len(segs) + 1
        x, y = segs_c[0]
        assert tok.decode(x[: y.index(next(t for t in y if t != -100))]).strip().startswith(b.COPY_PROMPT)
        reply = [t for t in y if t != -100]
        assert reply[-1] == tok.eos_token_id
        assert tok.decode(reply[:-1]).strip() == caption(asdict(s))
        assert x[-len(reply):] == reply and all(t == -100 for t in y[: -len(reply)])


def test_fit_reader_rejects_heads_that_do_not_divide_the_width(tmp_path):
    b = load_bench()
    import pytest

    with pytest.raises(ValueError, match="heads=3 must divide width=32"):
        b.fit_reader(str(tmp_path), b.text_scenes(2, 3.0), steps=1, layers=1, width=32, lr=1e-3, heads=3, kv_heads=1,
                     progress=False)


def test_lookup_lessons_read_the_neighbours_of_unique_scene_words():
    b = load_bench()
    d = "First a red square moves up. Then a blue square moves left and turns red. There are two objects."
    got = dict(b.lookup_lessons(d))
    assert got["Which word comes after blue?"] == "square" and got["Which word comes before blue?"] == "a"
    assert got["Which word comes after left?"] == "and" and got["Which word comes before up?"] == "moves"
    # "red" and "square" occur twice (no single answer), "moves"/"There" are not scene words
    assert not any(w in q for q in got for w in (" red?", " square?", " moves?", " There?"))
    assert len(got) == 6  # blue, up, left: after + before each


def test_encode_packed_lookup_appends_the_lookup_segments(tmp_path):
    b = load_bench()
    from dataclasses import asdict

    from transformers import AutoTokenizer

    from slotvlm.testing import make_tiny_llm
    from train_synth import caption

    scenes = b.text_scenes(2, 8.0)
    make_tiny_llm(tmp_path, seed=0, corpus=b.reader_corpus(scenes), vocab_size=1000)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    for s in scenes:
        _, segs = b.encode_packed(tok, s, copy=True)
        _, segs_l = b.encode_packed(tok, s, copy=True, lookup=True)
        looks = b.lookup_lessons(caption(asdict(s)))
        assert looks and segs_l[: len(segs)] == segs and len(segs_l) == len(segs) + len(looks)
        for (x, y), (q, a) in zip(segs_l[len(segs):], looks):
            reply = [t for t in y if t != -100]
            assert q in tok.decode(x[: len(x) - len(reply)]) and tok.decode(reply[:-1]).strip() == a


def test_fit_reader_rejects_a_negative_lookup(tmp_path):
    b = load_bench()
    import pytest

    with pytest.raises(ValueError, match="lookup must be >= 0 .* got -1"):
        b.fit_reader(str(tmp_path), b.text_scenes(2, 3.0), steps=1, layers=1, width=32, lr=1e-3, lookup=-1,
                     progress=False)
