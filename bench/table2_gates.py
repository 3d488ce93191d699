"""The two calibration gates of the Table-2 miniature (issue 26): can the reader read, do the features carry the answers?

    OMP_NUM_THREADS=1 python bench/table2_gates.py --save      # default; see docs/training.md for times
    python bench/table2_gates.py --smoke                        # the CI-sized run of the tests (< 1 min)

bench/table2.py compares connectors by how well a frozen tiny LLM answers from their tokens. That
comparison means something only if (1) the same LLM, given the *true* written description of the
test video where the video tokens go, answers nearly every held-out question ("reader gate", target
>= 90 %), and (2) the frozen visual features hold what the questions ask ("feature gate", target
>= 90 % per attribute). This script measures both, on the same synthetic data as bench/table2.py
(``slotvlm synth``, seed 0) and the same frozen tiny CLIP.

Reader gate. A random tiny LLaMA whose tokenizer is trained on the synthetic scenes' words (each
colour, shape, direction and number is one token), taught as text to answer from a description:
``USER: <description> <question> ASSISTANT: <answer></s>`` (Vicuna v1 template, loss on the answer
tokens), on descriptions of ``--text-scenes`` freshly drawn scenes (``synth.make_scene``, a seed of
their own: text only, no video is rendered, no test scene is used), AdamW with linear warm-up and
decay, gradient clipping 1. Each step reads 16 descriptions with ``--pack`` of their questions
packed behind each one; a block attention mask lets every question see its description and
itself only, with positions continuing the description's, so each is computed exactly as its own
single-turn prompt (tested) while the description is read once: 12 answers of supervision per
description read instead of 1. Before the questions, each description also gets a copy lesson,
"Repeat the description." answered with the description (``--no-copy`` drops it): copying trains
the find-a-word-and-read-the-next-one circuit on every word, which the questions need ("What shape
is the white object?") but train on one answer word each. Copy lessons are never scored.
Scored: greedy answers to the held-out questions of bench/table2.py's
test videos, given each video's true description; exact match per question type.

Feature gate. Probes on the frozen per-frame features of the cache (``slow``: ``[8, G, G, C]``):
a token-wise MLP, max-pooled over the G×G positions, then a linear classifier; trained on the
training videos, scored on the held-out ones. Attributes: the colour and the shape of the first
object (frame 0, where it is alone), the number of objects at the end (last frame) and the first
object's direction of motion (frames 0 and 1, token-wise concatenated).

Rows go to table2_gates.{csv,md} in bench/results/ with ``--save``, else a temporary folder.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict

import numpy as np
import torch

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path[:0] = [ROOT, BENCH]

from _common import append_csv, commit, device_name  # noqa: E402
from train_synth import caption, caption_accuracy  # noqa: E402

from slotvlm.data import synth  # noqa: E402
from slotvlm.data.features import FeatureCache, extract  # noqa: E402

TYPES = ("count", "colour", "shape", "direction", "order", "after")
ATTRIBUTES = ("colour", "shape", "count", "direction")
PRESETS = {
    # videos, seconds, reader: fresh text scenes, steps, questions packed per description, layers, width, lr;
    # probe steps
    "default": dict(videos=300, seconds=8.0, text_scenes=5000, text_steps=4000, pack=12, layers=4, width=128, lr=2e-3,
                    heads=8, kv_heads=8, copy=True, lookup=0, probe_steps=1500),
    "smoke": dict(videos=10, seconds=3.0, text_scenes=20, text_steps=3, pack=2, layers=1, width=32, lr=2e-3,
                  heads=4, kv_heads=2, copy=True, lookup=2, probe_steps=3),
}
COPY_PROMPT = "Repeat the description."  # the copy lesson's question (training only, never scored)
LOOKUP_PROMPTS = {"after": "Which word comes after {}?", "before": "Which word comes before {}?"}  # lookup lessons (training only)
TEXT_SEED = 12345  # the reader's text scenes: a generator of their own, never the test videos'


# ------------------------------------------------------------------------------------------- reader
def reader_corpus(scenes) -> list[str]:
    """Sentences the reader's tokenizer is trained on: descriptions, questions and answers of
    ``scenes``, and the chat template's system prompt."""
    from slotvlm.conversation import get_template

    out = [get_template("vicuna_v1").prompt(""), COPY_PROMPT, *(t.format("") for t in LOOKUP_PROMPTS.values())]
    for s in scenes:
        out.append(caption(asdict(s)))
        out += [f"{q} {a}" for _, q, a in synth.questions_for(s)]
    return out


def text_scenes(n: int, seconds: float, seed: int = TEXT_SEED) -> list:
    """``n`` random scenes (``synth.make_scene``) drawn from their own generator."""
    rng = np.random.default_rng(seed)
    return [synth.make_scene(rng, f"v_text{i:06d}", seconds, 112) for i in range(n)]


def lookup_lessons(description: str) -> list[tuple[str, str]]:
    """The lookup lessons of a description: for every scene word (a colour, shape or direction,
    the words the questions ask about) that occurs once in it, "Which word comes after <word>?"
    answered with the next word, and "... before <word>?" with the previous one (punctuation
    stripped). ``[(question, answer), ...]``."""
    scene_words = {*synth.COLOURS, *synth.SHAPES, *synth.DIRECTIONS}
    words = [w.strip(".,?!") for w in description.split()]
    counts = collections.Counter(words)
    out = []
    for i, w in enumerate(words):
        if counts[w] != 1 or w not in scene_words:
            continue
        if i + 1 < len(words):
            out.append((LOOKUP_PROMPTS["after"].format(w), words[i + 1]))
        if i > 0:
            out.append((LOOKUP_PROMPTS["before"].format(w), words[i - 1]))
    return out


def encode_packed(tok, scene, copy: bool = False, lookup: bool = False) -> tuple[list[int], list[tuple[list[int], list[int]]]]:
    """``scene``'s reading lesson for the reader: the prompt up to the end of its description
    (BOS + system + ``USER: <description>``), and per question the rest of the turn
    (``\n<question> ASSISTANT: <answer></s>``) as ``(ids, labels)`` (labels -100 but on the reply,
    which is split as in the whole turn). Prefix + one segment is exactly the single-turn prompt.
    ``copy``: the first segment is the copy lesson instead, ``\nRepeat the description. ASSISTANT:
    <description></s>`` (see :func:`fit_reader`). ``lookup``: the lookup lessons
    (:func:`lookup_lessons`) follow the questions, as further segments."""
    from slotvlm.conversation import VIDEO_TOKEN, get_template, reply_token_ids

    conv = get_template("vicuna_v1")
    full = conv.prompt("\0").replace(VIDEO_TOKEN, caption(asdict(scene)))
    head, tail = full.split("\n\0")
    prefix = [tok.bos_token_id] + tok(head, add_special_tokens=False).input_ids
    turns = [(q, a) for _, q, a in synth.questions_for(scene)]
    if copy:
        turns.insert(0, (COPY_PROMPT, caption(asdict(scene))))
    if lookup:
        turns += lookup_lessons(caption(asdict(scene)))
    segments = []
    for q, a in turns:
        seg, reply = reply_token_ids(tok, "\n" + q + tail, a, conv.answer_prefix)
        reply = reply + [tok.eos_token_id]
        segments.append((seg + reply, [-100] * len(seg) + reply))
    return prefix, segments


def packed_batch(items, pad_id: int):
    """Pack ``[(prefix, [(ids, labels), ...]), ...]`` (one description and some of its questions
    each) into ``input_ids, labels [B, L]``, a boolean ``attention_mask [B, 1, L, L]`` and
    ``position_ids [B, L]``: every question segment sees its description and itself (causally),
    never the other questions, and its positions continue the description's, so each segment is
    computed exactly as the single-turn prompt would be, while the description is read once."""
    n = max(len(p) + sum(len(x) for x, _ in segs) for p, segs in items)
    b = len(items)
    ids = torch.full((b, n), pad_id)
    lab = torch.full((b, n), -100)
    pos = torch.zeros(b, n, dtype=torch.long)
    allow = torch.zeros(b, 1, n, n, dtype=torch.bool)
    for j, (prefix, segs) in enumerate(items):
        m = len(prefix)
        ids[j, :m], pos[j, :m] = torch.tensor(prefix), torch.arange(m)
        allow[j, 0, :m, :m] = torch.ones(m, m, dtype=torch.bool).tril()
        o = m
        for x, y in segs:
            k = len(x)
            ids[j, o : o + k], lab[j, o : o + k], pos[j, o : o + k] = torch.tensor(x), torch.tensor(y), torch.arange(m, m + k)
            allow[j, 0, o : o + k, :m] = True
            allow[j, 0, o : o + k, o : o + k] = torch.ones(k, k, dtype=torch.bool).tril()
            o += k
        allow[j, 0, o:, 0] = True  # padding rows attend to one token (no empty softmax)
    return ids, lab, allow, pos


def fit_reader(out: str, scenes, steps: int, layers: int, width: int, lr: float, seed: int = 0,
               batch_size: int = 16, pack: int = 12, copy: bool = True, heads: int = 4, kv_heads: int = 2,
               lookup: int = 0, progress: bool = True, log=None) -> str:
    """Build the reader in ``out`` (tokenizer on :func:`reader_corpus`, random LLaMA ``layers`` ×
    ``width``, ``heads`` attention heads sharing ``kv_heads`` key/value heads) and teach it to
    answer the questions of ``scenes`` from their descriptions: each step reads ``batch_size``
    descriptions, each with ``pack`` of its questions (drawn at random; all of them if it has
    fewer) packed behind it by :func:`packed_batch`. Loss: cross-entropy on the reply tokens;
    AdamW, linear warm-up and decay, gradient clipping 1.

    ``copy`` adds to every description a copy lesson: "Repeat the description." answered with the
    description itself. Copying trains the circuit that finds a word in the description and reads
    the word after it (an induction head) on every word of the copy, which the questions alone
    train only on their one answer word. Without it the reader sat at guessing on "What shape is
    the white object?" in 2- and 3-object scenes (2 layers, 1,000 steps: 54 %); with it, 100 %
    by step 1,000 (docs/training.md, "Calibration gates"). Copy lessons are never scored.

    ``lookup`` adds that many lookup lessons (:func:`lookup_lessons`, drawn at random) to every
    description in a step: "Which word comes after red?" trains the two-step circuit that the
    binding questions ("What shape is the red object ...?") need (take a word from the question,
    find it in the description, read its neighbour) on every unique word, where the questions
    train it on one answer each. Never scored."""
    import random

    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slotvlm.testing import make_tiny_llm

    if pack < 1:
        raise ValueError(f"pack must be >= 1 question per description, got {pack}")
    if lookup < 0:
        raise ValueError(f"lookup must be >= 0 lookup lessons per description, got {lookup}")
    corpus = reader_corpus(scenes[:300])
    if heads < 1 or kv_heads < 1 or heads % kv_heads or width % heads:
        raise ValueError(f"heads={heads} must divide width={width} and be a multiple of kv_heads={kv_heads}")
    make_tiny_llm(out, seed=seed, corpus=corpus, vocab_size=1000, hidden_size=width, intermediate_size=2 * width,
                  num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads)
    tok = AutoTokenizer.from_pretrained(out)
    llm = AutoModelForCausalLM.from_pretrained(out)
    lessons = []
    for s in scenes:
        prefix, segs = encode_packed(tok, s, copy=copy, lookup=lookup > 0)
        n_look = len(lookup_lessons(caption(asdict(s)))) if lookup else 0
        lessons.append((prefix, segs[: len(segs) - n_look], segs[len(segs) - n_look :]))
    rng = random.Random(seed)
    opt = torch.optim.AdamW(llm.parameters(), lr=lr)
    warm = max(1, min(50, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * max(0.05, 1 - s / steps))
    llm.train()
    bar = tqdm(range(steps), desc="reader", unit="step", disable=not progress)
    for step in bar:
        items = []
        for _ in range(batch_size):
            prefix, segs, looks = lessons[rng.randrange(len(lessons))]
            head, segs = (segs[:1], segs[1:]) if copy else ([], segs)
            items.append((prefix, head + rng.sample(segs, min(pack, len(segs))) + rng.sample(looks, min(lookup, len(looks)))))
        ids, lab, allow, pos = packed_batch(items, tok.pad_token_id)
        logits = llm(input_ids=ids, attention_mask=allow, position_ids=pos).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), lab[:, 1:].flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(llm.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if log is not None and (step % 1000 == 0 or step == steps - 1):
            log(step, loss.item())
    llm.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def read_descriptions(llm_dir: str, data: str) -> dict:
    """Greedy answers of the reader in ``llm_dir`` to the held-out questions of ``data``, each given
    its video's true description (bench/train_synth.py's ceiling): ``{question_id: correct}``."""
    caps = {sc["video_id"]: caption(sc) for sc in json.load(open(os.path.join(data, "meta.json")))["scenes"]}
    return caption_accuracy(llm_dir, caps, os.path.join(data, "qa"), per_question=True)[1]


def by_type(hits: dict, data: str) -> dict:
    """Accuracy overall (``all``) and per report type of ``{question_id: correct}``."""
    kinds = {a["question_id"]: a["kind"] for a in json.load(open(os.path.join(data, "qa", "test_a.json")))}
    groups = collections.defaultdict(list)
    for qid, ok in hits.items():
        groups["all"].append(ok)
        groups[synth.REPORT_TYPE[kinds[qid]]].append(ok)
    return {k: sum(v) / len(v) for k, v in groups.items()}


# ------------------------------------------------------------------------------------------- probes
def probe_targets(data: str, cache: str) -> tuple[dict, dict, int]:
    """Per video: the probes' inputs ``{attribute: [V, G*G, C or 2C]}`` and labels ``{attribute: [V]}``;
    and the number of training videos (the first ones)."""
    meta = json.load(open(os.path.join(data, "meta.json")))
    fc = FeatureCache(cache)
    f0, f1, fl, y = [], [], [], {a: [] for a in ATTRIBUTES}
    for sd in meta["scenes"]:
        s = synth.scene_from_dict(sd)
        slow = fc.load(s.video_id)["slow"].float()  # [8, G, G, C]
        f0.append(slow[0].flatten(0, 1))
        f1.append(slow[1].flatten(0, 1))
        fl.append(slow[-1].flatten(0, 1))
        first = min(s.objects, key=lambda o: o.appear)
        y["colour"].append(list(synth.COLOURS).index(first.colour_at(0.0)))
        y["shape"].append(synth.SHAPES.index(first.shape))
        y["direction"].append(list(synth.DIRECTIONS).index(first.direction))
        y["count"].append(len(s.objects))
    f0, f1, fl = torch.stack(f0), torch.stack(f1), torch.stack(fl)
    n_train = meta["train_videos"]
    mu, sd = f0[:n_train].mean((0, 1)), f0[:n_train].std((0, 1)) + 1e-5
    z = lambda x: (x - mu) / sd  # noqa: E731
    x = {"colour": z(f0), "shape": z(f0), "count": z(fl), "direction": torch.cat([z(f0), z(f1)], -1)}
    return x, {a: torch.tensor(v) for a, v in y.items()}, n_train


def probe(x: torch.Tensor, y: torch.Tensor, n_train: int, steps: int, seed: int = 0) -> tuple[float, float]:
    """Train the token-wise-MLP + max-pool + linear probe on the first ``n_train`` rows of ``x
    [V, P, C]`` / ``y [V]``; (train accuracy, held-out accuracy)."""
    torch.manual_seed(seed)
    classes = int(y.max()) + 1
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[-1], 128), torch.nn.GELU(), torch.nn.Linear(128, 128))
    head = torch.nn.Linear(128, classes)
    opt = torch.optim.AdamW([*net.parameters(), *head.parameters()], lr=1e-3, weight_decay=1e-2)
    f = lambda v: head(net(v).max(1).values)  # noqa: E731
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(n_train, (64,), generator=g)
        loss = torch.nn.functional.cross_entropy(f(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = f(x).argmax(-1)
    ok = (pred == y).float()
    return ok[:n_train].mean().item(), ok[n_train:].mean().item()


# ------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a CI-sized run (10 videos, 3 reader steps)")
    ap.add_argument("--text-steps", type=int, help="reader training steps (default 4000)")
    ap.add_argument("--text-scenes", type=int, help="fresh scenes whose descriptions teach the reader (default 5000)")
    ap.add_argument("--pack", type=int, help="questions packed behind each description per reader step (default 12)")
    ap.add_argument("--layers", type=int, help="reader depth (default 4)")
    ap.add_argument("--width", type=int, help="reader width (default 128)")
    ap.add_argument("--lr", type=float, help="reader peak lr (default 2e-3)")
    ap.add_argument("--heads", type=int, help="reader attention heads (default 8)")
    ap.add_argument("--kv-heads", type=int, help="reader key/value heads (default 8)")
    ap.add_argument("--no-copy", dest="copy", action="store_false", default=None,
                    help="train the reader without the copy lesson ('Repeat the description.')")
    ap.add_argument("--lookup", type=int, help="lookup lessons ('Which word comes after red?') per description per reader step "
                                                "(default 0; 0 turns them off)")
    ap.add_argument("--work", help="folder for data, models and caches (default: a temporary folder)")
    ap.add_argument("--save", action="store_true", help="write table2_gates.{csv,md} to bench/results/")
    ap.add_argument("--label", help="a label for the CSV rows (default: the preset name)")
    args = ap.parse_args(argv)
    preset = "smoke" if args.smoke else "default"
    p = dict(PRESETS[preset])
    if args.copy is not None:
        p["copy"] = args.copy
    if args.lookup is not None:
        if args.lookup < 0:
            raise SystemExit(f"error: --lookup must be >= 0, got {args.lookup}")
        p["lookup"] = args.lookup
    for k in ("text_steps", "text_scenes", "pack", "layers", "width", "lr", "heads", "kv_heads"):
        v = getattr(args, k)
        if v is not None:
            if v <= 0:
                raise SystemExit(f"error: --{k.replace('_', '-')} must be > 0, got {v}")
            p[k] = v
    progress = not args.smoke
    t0 = time.time()
    work = args.work or tempfile.mkdtemp(prefix="table2_gates_")
    from slotvlm.testing import make_tiny_clip

    data, clip, cache, reader = (os.path.join(work, n) for n in ("data", "clip", "cache", "reader"))
    if not os.path.exists(os.path.join(data, "qa", "test_a.json")):
        synth.generate(data, p["videos"], seed=0, seconds=p["seconds"], progress=progress)
    if not os.path.exists(os.path.join(clip, "config.json")):
        make_tiny_clip(clip, seed=0, hidden_size=64, intermediate_size=128, num_attention_heads=4)  # bench/table2.py's
    extract(os.path.join(data, "videos"), clip, cache, batch_size=32, progress=progress)

    x, y, n_train = probe_targets(data, cache)
    feature = {a: probe(x[a], y[a], n_train, p["probe_steps"]) for a in ATTRIBUTES}
    t_probe = time.time() - t0
    print(json.dumps({"feature_gate": feature}), flush=True)

    def log(step, loss):
        if not args.smoke:
            print(f"reader step {step}: loss {loss:.4f}", flush=True)

    t1 = time.time()
    fit_reader(reader, text_scenes(p["text_scenes"], p["seconds"]), p["text_steps"], p["layers"], p["width"], p["lr"],
               pack=p["pack"], copy=p["copy"], heads=p["heads"], kv_heads=p["kv_heads"], lookup=p["lookup"],
               progress=progress, log=log)
    reading = by_type(read_descriptions(reader, data), data)
    t_reader = time.time() - t1
    print(json.dumps({"reader_gate": reading}), flush=True)

    stamp = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"), "commit": commit(), "device": device_name("cpu"),
             "torch": torch.__version__, "label": args.label or preset, "videos": p["videos"],
             "reader": f"{p['layers']}x{p['width']}, {p['heads']}/{p['kv_heads']} heads, {p['text_steps']} steps of 16 "
                       f"descriptions x ({'1 copy + ' if p['copy'] else ''}{p['pack']} questions"
                       f"{' + %d lookups' % p['lookup'] if p['lookup'] else ''}), lr {p['lr']}, "
                       f"{p['text_scenes']} text scenes"}
    rows = [{**stamp, "gate": "reader", "what": t, "accuracy": round(v, 4), "target": 0.9, "passed": v >= 0.9,
             "wall_s": round(t_reader, 1)} for t, v in reading.items()]
    rows += [{**stamp, "gate": "feature", "what": a, "accuracy": round(te, 4), "train_accuracy": round(tr, 4),
              "target": 0.9, "passed": te >= 0.9, "wall_s": round(t_probe, 1)} for a, (tr, te) in feature.items()]
    fields = ["timestamp", "commit", "device", "torch", "label", "videos", "reader", "gate", "what", "accuracy",
              "train_accuracy", "target", "passed", "wall_s"]
    from _common import RESULTS

    out_dir = str(RESULTS) if args.save else tempfile.mkdtemp(prefix="table2_gates_out_")
    os.makedirs(out_dir, exist_ok=True)
    csv_path = append_csv(os.path.join(out_dir, "table2_gates.csv"), rows, fields)
    lines = [f"{stamp['label']}: {p['videos']} videos, reader {stamp['reader']}; {device_name('cpu')}, "
             f"{(time.time() - t0) / 60:.0f} min, {stamp['timestamp'][:10]}", "",
             "| gate | what | held-out accuracy | target | passed |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['gate']} | {r['what']} | {100 * r['accuracy']:.1f} % | 90 % | {'yes' if r['passed'] else 'no'} |")
    md = "\n".join(lines)
    with open(os.path.join(out_dir, "table2_gates.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    print(f"wrote {csv_path}, {os.path.join(out_dir, 'table2_gates.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
