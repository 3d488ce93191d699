"""A short CPU learning run on synthetic data: does stage-2 training make the model use the video?

    OMP_NUM_THREADS=1 python bench/train_synth.py --out /tmp/synth_run    # ~25 min on one CPU thread

Pipeline (all through the library's public code paths, tiny random models, no downloads):
  1. ``slotvlm synth``-equivalent: procedurally generated shape videos + QA (held-out test videos);
  2. feature cache with a tiny random CLIP (``slotvlm extract``);
  3. a tiny LLaMA first taught, on the *training* videos only and as text, to answer a question
     from a written description of the scene put where the video goes ("First a red circle moves
     left and turns white. Then a blue square moves up. There are two objects.") — a stand-in for
     the pre-trained LLM the paper starts from, which can already read and answer; then frozen.
     Stage 2 must make the connector turn the video into something this frozen LLM can read;
  4. stage 1 (slot reconstruction), then stage 2 with the object branch (``--branch slow``);
  5. exact-match accuracy of greedy answers on the held-out test questions, against
     the majority-answer baseline (the most common training answer) and the stronger per-question
     majority (the most common training answer to the same question text — the best a model that
     ignores the video can do), and against the same LLM fed the untrained connector's tokens.

Results are printed as JSON and appended to train_synth.csv: in bench/results/ with --save, otherwise
in $SLOTVLM_BENCH_DIR or <temp>/slotvlm-bench/ (outside the checkout).
"""
from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import platform
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from slotvlm.data import synth  # noqa: E402
from slotvlm.data.features import FeatureCache, extract  # noqa: E402
from slotvlm.data.instruct import load_instructions  # noqa: E402


def normalise(s: str) -> str:
    return " ".join(s.lower().strip().rstrip(".").split())


def caption(scene: dict) -> str:
    """A written description of a synthetic scene (ground truth, from meta.json)."""
    objs = sorted(scene["objects"], key=lambda o: o["appear"])
    parts = []
    for i, o in enumerate(objs):
        s = f"{'First' if i == 0 else 'Then'} a {o['colour']} {o['shape']} moves {o['direction']}"
        parts.append(s + (f" and turns {o['new_colour']}." if o["new_colour"] else "."))
    n = len(objs)
    return " ".join(parts) + f" There {'is' if n == 1 else 'are'} {synth.NUMBERS[n]} object{'s' if n > 1 else ''}."


def fit_text_prior(llm_dir: str, out_dir: str, examples, captions: dict, steps: int, lr: float, seed: int) -> str:
    """Train the tiny LLM on ``USER: <caption> q ASSISTANT: a</s>`` (Vicuna v1 template, the caption
    where the video goes), loss on the answer tokens; save to ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slotvlm.conversation import VIDEO_TOKEN, get_template, reply_token_ids

    tok = AutoTokenizer.from_pretrained(llm_dir)
    llm = AutoModelForCausalLM.from_pretrained(llm_dir)
    conv = get_template("vicuna_v1")
    seqs = []
    for e in examples:
        prompt = conv.prompt(e.question).replace(VIDEO_TOKEN, captions[e.video_id])
        p, a = reply_token_ids(tok, prompt, e.answer, conv.answer_prefix)  # the reply split as in the turn
        p, a = [tok.bos_token_id] + p, a + [tok.eos_token_id]
        seqs.append((p + a, [-100] * len(p) + a))
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(llm.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * max(0.05, 1 - s / steps))
    llm.train()
    for step in range(steps):
        idx = torch.randint(len(seqs), (32,), generator=g).tolist()
        n = max(len(seqs[i][0]) for i in idx)
        ids = torch.full((32, n), tok.pad_token_id)
        lab = torch.full((32, n), -100)
        att = torch.zeros(32, n, dtype=torch.long)
        for j, i in enumerate(idx):
            s, l = seqs[i]
            ids[j, : len(s)], lab[j, : len(l)], att[j, : len(s)] = torch.tensor(s), torch.tensor(l), 1
        loss = llm(input_ids=ids, attention_mask=att, labels=lab).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"text prior step {step}: loss {loss.item():.4f}", flush=True)
    llm.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


@torch.no_grad()
def caption_accuracy(llm_dir: str, captions: dict, qa_dir: str, per_question: bool = False):
    """The frozen LLM given the *true* description of each test video: the ceiling of stage 2.
    Returns the accuracy, or ``(accuracy, {question_id: correct})`` with ``per_question``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slotvlm.conversation import VIDEO_TOKEN, get_template

    tok = AutoTokenizer.from_pretrained(llm_dir)
    tok.padding_side = "left"
    llm = AutoModelForCausalLM.from_pretrained(llm_dir).eval()
    conv = get_template("vicuna_v1")
    qs = json.load(open(os.path.join(qa_dir, "test_q.json")))
    ans = {a["question_id"]: a["answer"] for a in json.load(open(os.path.join(qa_dir, "test_a.json")))}
    hits = {}
    for i in range(0, len(qs), 64):
        chunk = qs[i : i + 64]
        prompts = [conv.prompt(q["question"]).replace(VIDEO_TOKEN, captions["v_" + q["video_name"]]) for q in chunk]
        enc = tok(prompts, return_tensors="pt", padding=True)
        out = llm.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        texts = tok.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
        hits.update({q["question_id"]: normalise(t) == normalise(ans[q["question_id"]]) for q, t in zip(chunk, texts)})
    acc = sum(hits.values()) / len(qs)
    return (acc, hits) if per_question else acc


@torch.no_grad()
def evaluate(model_dir: str, cache_dir: str, qa_dir: str, batch: int = 32) -> tuple[float, list]:
    from slotvlm.model import SlotVLM

    model = SlotVLM.from_pretrained(model_dir, device="cpu").eval()
    cache = FeatureCache(cache_dir)
    qs = json.load(open(os.path.join(qa_dir, "test_q.json")))
    ans = {a["question_id"]: a["answer"] for a in json.load(open(os.path.join(qa_dir, "test_a.json")))}
    preds = []
    for i in range(0, len(qs), batch):
        chunk = qs[i : i + batch]
        feats = [cache.load(q["video_name"]) for q in chunk]
        slow = torch.stack([f["slow"] for f in feats]).float()
        fast = [f["fast"].float() for f in feats]
        emb = model.encode_features(slow=slow, fast=fast)
        out = model.generate(emb, [q["question"] for q in chunk], max_new_tokens=8)
        preds += [(q, p, ans[q["question_id"]]) for q, p in zip(chunk, out)]
    acc = sum(normalise(p) == normalise(a) for _, p, a in preds) / len(preds)
    return acc, preds


def _kind(question: str) -> str:
    return " ".join(question.split()[:2])  # "How many", "What color", "In which", ...


def baselines(train_examples, qa_dir: str) -> dict:
    """Majority answer overall, and the per-question majority (overall and by question kind)."""
    qs = json.load(open(os.path.join(qa_dir, "test_q.json")))
    ans = {a["question_id"]: a["answer"] for a in json.load(open(os.path.join(qa_dir, "test_a.json")))}
    overall = collections.Counter(e.answer for e in train_examples).most_common(1)[0][0]
    per_q = collections.defaultdict(collections.Counter)
    for e in train_examples:
        per_q[e.question][e.answer] += 1
    hits = collections.defaultdict(list)
    for q in qs:
        guess = per_q[q["question"]].most_common(1)[0][0] if q["question"] in per_q else overall
        hits[_kind(q["question"])].append(guess == ans[q["question_id"]])
    maj = sum(ans[q["question_id"]] == overall for q in qs) / len(qs)
    pq = sum(sum(v) for v in hits.values()) / len(qs)
    return {"majority_answer": overall, "majority_acc": maj, "per_question_majority_acc": pq,
            "per_question_majority_by_kind": {k: round(sum(v) / len(v), 3) for k, v in sorted(hits.items())}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--save", action="store_true",
                    help="append the result row to bench/results/train_synth.csv (default: $SLOTVLM_BENCH_DIR or <temp>/slotvlm-bench/)")
    ap.add_argument("--videos", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text-steps", type=int, default=1500, help="steps teaching the LLM to answer from descriptions")
    ap.add_argument("--stage1-steps", type=int, default=10)
    ap.add_argument("--steps", type=int, default=4000, help="stage-2 steps")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3, help="stage-2 lr (the paper's 2e-5 is for a 7B LLM)")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    from slotvlm.testing import make_tiny_clip, make_tiny_llm
    from slotvlm.model import SlotVLM, SlotVLMConfig
    from slotvlm.train import TrainConfig, read_log, train

    t_start = time.time()
    out = args.out
    data = os.path.join(out, "data")
    if not os.path.exists(os.path.join(data, "qa", "test_a.json")):
        print(synth.generate(data, args.videos, seed=args.seed))
    clip = os.path.join(out, "clip")
    if not os.path.exists(os.path.join(clip, "config.json")):
        make_tiny_clip(clip, seed=args.seed, hidden_size=64, intermediate_size=128, num_attention_heads=4)
        make_tiny_llm(os.path.join(out, "llm_random"), seed=args.seed, hidden_size=128, intermediate_size=256,
                      num_hidden_layers=2)
    cache = os.path.join(out, "cache")
    t0 = time.time()
    print(extract(os.path.join(data, "videos"), clip, cache, batch_size=32))
    t_extract = time.time() - t0
    examples, stats = load_instructions(os.path.join(data, "instructions.json"), FeatureCache(cache))
    print(stats)
    captions = {sc["video_id"]: caption(sc) for sc in json.load(open(os.path.join(data, "meta.json")))["scenes"]}
    llm = os.path.join(out, "llm")
    if not os.path.exists(os.path.join(llm, "config.json")):
        fit_text_prior(os.path.join(out, "llm_random"), llm, examples, captions, args.text_steps, 2e-3, args.seed)
    acc_caption = caption_accuracy(llm, captions, os.path.join(data, "qa"))
    print({"llm_with_true_caption_acc": acc_caption}, flush=True)
    init = os.path.join(out, "init")
    cfg = SlotVLMConfig(vision_model=clip, llm_model=llm, slot_dim=64, slot_hidden_dim=64, proj_dim=64, max_frames=32,
                        qformer_heads=4)
    SlotVLM.from_config(cfg, device="cpu", dtype=torch.float32, seed=args.seed).save_pretrained(init)
    s1, s2 = os.path.join(out, "stage1"), os.path.join(out, "stage2_slow")
    t0 = time.time()
    train(TrainConfig(stage=1, model=[init], features=cache, out=s1, max_steps=args.stage1_steps, batch_size=8,
                      lr=1e-3, seed=args.seed))
    t_s1 = time.time() - t0
    t0 = time.time()
    train(TrainConfig(stage=2, branch="slow", model=[s1], features=cache, data=os.path.join(data, "instructions.json"),
                      out=s2, max_steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed))
    t_s2 = time.time() - t0
    log = read_log(s2)
    # The same frozen LLM fed the untrained connector's (object-only) tokens: what the text prior alone gives.
    s0 = os.path.join(out, "untrained_slow")
    SlotVLM.from_config(cfg.replace(use_fast=False), device="cpu", dtype=torch.float32, seed=args.seed).save_pretrained(s0)
    acc0, _ = evaluate(s0, cache, os.path.join(data, "qa"))
    acc, preds = evaluate(s2, cache, os.path.join(data, "qa"))
    by_type = collections.defaultdict(list)
    for q, p, a in preds:
        by_type[_kind(q["question"])].append(normalise(p) == normalise(a))
    res = {
        "videos": args.videos, "train_examples": len(examples), "test_questions": len(preds),
        **baselines(examples, os.path.join(data, "qa")),
        "untrained_connector_acc": acc0, "stage2_slow_acc": acc, "llm_with_true_caption_acc": acc_caption,
        "stage2_acc_by_kind": {k: (round(sum(v) / len(v), 3), len(v)) for k, v in sorted(by_type.items())},
        "stage2_first_loss": log[0]["loss"], "stage2_last_loss": log[-1]["loss"],
        "stage2_steps": len(log), "stage2_lr": args.lr, "batch_size": args.batch_size,
        "seconds": {"extract": round(t_extract, 1), "stage1": round(t_s1, 1), "stage2": round(t_s2, 1),
                    "total": round(time.time() - t_start, 1)},
        "examples": [(q["question"], p, a) for q, p, a in preds[:8]],
    }
    print(json.dumps(res, indent=1))
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from _common import output_dir  # noqa: PLC0415

    os.makedirs(output_dir(args.save), exist_ok=True)
    path = os.path.join(output_dir(args.save), "train_synth.csv")
    new = not os.path.exists(path)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["time", "device", "torch", "commit", "videos", "stage2_steps", "lr", "majority_acc",
                        "per_question_majority_acc", "untrained_connector_acc", "stage2_slow_acc", "llm_with_true_caption_acc", "total_s"])
        w.writerow([time.strftime("%Y-%m-%dT%H:%M:%S"), f"cpu ({platform.processor() or platform.machine()}, "
                    f"{torch.get_num_threads()} threads)", torch.__version__, commit, args.videos, len(log), args.lr,
                    round(res["majority_acc"], 4), round(res["per_question_majority_acc"], 4), round(acc0, 4),
                    round(acc, 4), round(acc_caption, 4), res["seconds"]["total"]])
    print(f"appended 1 row to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
