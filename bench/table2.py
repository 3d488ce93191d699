"""The Slot-VLM paper's Table 2 in miniature: slots vs pooling vs Q-Former vs one branch, on CPU.

    OMP_NUM_THREADS=2 python bench/table2.py --jobs 2        # default: 3 seeds, two at a time (see docs/training.md)
    python bench/table2.py --smoke                           # the CI-sized run of the tests (< 1 min)
    python bench/table2.py --full --save                     # a GPU-sized run, results into bench/results/

Every row uses the same synthetic data (``slotvlm synth``, fixed seed), the same frozen tiny CLIP
(random, width 64) and the same frozen tiny LLaMA, the *reader*: first taught as text to answer
from a written description of the scene, on fresh text scenes of its own (bench/table2_gates.py's
``fit_reader``, whose reader gate measures this very LLM; a stand-in for a pre-trained LLM that can
already read), the same batch size, learning rate, cosine schedule and step count per training
stage, and the same connector seeds. Rows (``N`` = ``--steps``):

  Slot-VLM        stage 1 (reconstruction, both branches) -> stage 2 object branch (N) and stage 2
                  event branch (N) -> stage 3 both branches (N); 64 + 128 = 192 tokens
  Slow-only       stage 1 -> stage 2 object branch (N); 64 tokens
  Fast-only       stage 1 -> stage 2 event branch (N); 128 tokens
  Pooling         Video-ChatGPT spatial + temporal pooling, one linear layer, trained 3N steps
                  (the same number of instruction steps as a two-branch row); 356 tokens
  Q-Former        the Slot-VLM recipe with Q-Formers (8 + 8 queries per frame / position, two
                  branches, 192 tokens) instead of slot attention; no stage 1 (nothing to reconstruct)
  Slot-VLM (SSM)  the Slot-VLM recipe with event_encoder="slot_ssm" (SlotSSM over time for the
                  event branch; its stage 1 trains the event branch, the object branch is the
                  Slot-VLM row's stage-2 object branch)

Reported: held-out exact match overall, per question type (count, colour, shape, direction,
order, after; see docs/training.md) and per need (object / event / both), visual tokens, training
time per example seen (wall clock, and the process's CPU seconds in the CSV: on a shared machine
the CPU time is what an idle one would take per thread) and inference time per question
(connector + greedy answer), mean ±
standard error over the seeds; and the ceilings that do not depend on a seed: the video-blind
answers (per-type and per-question majority of the training answers) and the frozen LLM reading
the true description of the test video. Without ``--save`` the CSV, markdown table and chart go
to a temporary folder (printed); with ``--save`` to bench/results/table2.{csv,md,png}.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import shutil
import sys
import tempfile
import time

import torch

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path[:0] = [ROOT, BENCH]

from _common import append_csv, commit, device_name  # noqa: E402
from table2_gates import PRESETS as GATE_PRESETS, fit_reader, text_scenes  # noqa: E402
from train_synth import caption, caption_accuracy, evaluate, normalise  # noqa: E402

from slotvlm.data import synth  # noqa: E402
from slotvlm.data.features import FeatureCache, extract  # noqa: E402
from slotvlm.data.instruct import load_instructions  # noqa: E402

ROWS = ("Slot-VLM", "Slow-only", "Fast-only", "Pooling", "Q-Former", "Slot-VLM (SSM)")
TYPES = ("count", "colour", "shape", "direction", "order", "after")
NEEDS = ("object", "event", "both")
METRICS = ("all", *TYPES, *(f"needs_{n}" for n in NEEDS))
CEILINGS = ("video-blind, per-type majority", "video-blind, per-question majority", "reads the true description")

# The reader (the frozen LLM) is bench/table2_gates.py's, trained the same way: fresh text scenes,
# its steps, depth, width and lr (the reader gate measures exactly this LLM).
_KEYS = {"text_scenes": "text_scenes", "text_steps": "text_steps", "pack": "pack", "layers": "layers", "width": "width",
         "lr": "reader_lr", "heads": "heads", "kv_heads": "kv_heads", "copy": "copy", "lookup": "lookup"}
_READER = {v: GATE_PRESETS["default"][k] for k, v in _KEYS.items()}
_READER_SMOKE = {v: GATE_PRESETS["smoke"][k] for k, v in _KEYS.items()}
PRESETS = {
    # videos, seconds, stage-1 steps, steps N, batch, seeds; the reader
    "default": dict(videos=300, seconds=8.0, stage1_steps=10, steps=300, batch_size=16, seeds=[0, 1, 2], **_READER),
    "full": dict(videos=1000, seconds=8.0, stage1_steps=200, steps=3000, batch_size=32, seeds=[0, 1, 2], **_READER),
    "smoke": dict(videos=6, seconds=3.0, stage1_steps=1, steps=1, batch_size=4, seeds=[0, 1], **_READER_SMOKE),
}


# ------------------------------------------------------------------------------------------ scoring
def _type_of(kind: str) -> str:
    return synth.REPORT_TYPE[kind]


def score(hits: dict, kinds: dict) -> dict:
    """``hits {question_id: bool}`` → accuracy overall (``all``), per report type and per need
    (``needs_object`` …); a group without questions is NaN."""
    groups = collections.defaultdict(list)
    for qid, ok in hits.items():
        k = kinds[qid]
        groups["all"].append(ok)
        groups[_type_of(k)].append(ok)
        groups[f"needs_{synth.NEEDS[k]}"].append(ok)
    return {m: (sum(groups[m]) / len(groups[m]) if groups[m] else math.nan) for m in METRICS}


def blind_hits(train_examples, test_q: list, answers: dict, kinds: dict) -> tuple[dict, dict]:
    """The best answers that ignore the video: the most common training answer of the question's
    type, and of the same question text (falling back to the type's). ``{qid: correct}`` each."""
    by_type, by_q = collections.defaultdict(collections.Counter), collections.defaultdict(collections.Counter)
    for e in train_examples:
        by_type[synth.question_kind(e.question)][e.answer] += 1
        by_q[e.question][e.answer] += 1
    per_type, per_q = {}, {}
    for q in test_q:
        qid, kind = q["question_id"], kinds[q["question_id"]]
        t_guess = by_type[kind].most_common(1)[0][0] if by_type[kind] else ""
        q_guess = by_q[q["question"]].most_common(1)[0][0] if by_q[q["question"]] else t_guess
        per_type[qid] = normalise(t_guess) == normalise(answers[qid])
        per_q[qid] = normalise(q_guess) == normalise(answers[qid])
    return per_type, per_q


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample s.d. / sqrt(n); NaN for n < 2)."""
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return math.nan, math.nan
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, math.nan
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v))


# ------------------------------------------------------------------------------------------ pipeline
def prepare(work: str, p: dict, progress: bool) -> dict:
    """Data, frozen CLIP + LLM (the reader, fitted once), feature cache, ceilings: shared by every row."""
    from slotvlm.testing import make_tiny_clip

    data = os.path.join(work, "data")
    if not os.path.exists(os.path.join(data, "qa", "test_a.json")):
        synth.generate(data, p["videos"], seed=0, seconds=p["seconds"], progress=progress)
    clip, llm = os.path.join(work, "clip"), os.path.join(work, "llm")
    if not os.path.exists(os.path.join(clip, "config.json")):
        make_tiny_clip(clip, seed=0, hidden_size=64, intermediate_size=128, num_attention_heads=4)
    cache = os.path.join(work, "cache")
    extract(os.path.join(data, "videos"), clip, cache, batch_size=32, progress=progress)
    instr = os.path.join(data, "instructions.json")
    examples, _ = load_instructions(instr, FeatureCache(cache))
    captions = {sc["video_id"]: caption(sc) for sc in json.load(open(os.path.join(data, "meta.json")))["scenes"]}
    if not os.path.exists(os.path.join(llm, "config.json")):
        fit_reader(llm, text_scenes(p["text_scenes"], p["seconds"]), p["text_steps"], p["layers"], p["width"],
                   p["reader_lr"], pack=p["pack"], copy=p["copy"], heads=p["heads"], kv_heads=p["kv_heads"],
                   lookup=p["lookup"], progress=progress)
    qa = os.path.join(data, "qa")
    test_q = json.load(open(os.path.join(qa, "test_q.json")))
    test_a = json.load(open(os.path.join(qa, "test_a.json")))
    answers = {a["question_id"]: a["answer"] for a in test_a}
    kinds = {a["question_id"]: a["kind"] for a in test_a}
    _, cap_hits = caption_accuracy(llm, captions, qa, per_question=True)
    per_type, per_q = blind_hits(examples, test_q, answers, kinds)
    ceilings = {CEILINGS[0]: score(per_type, kinds), CEILINGS[1]: score(per_q, kinds), CEILINGS[2]: score(cap_hits, kinds)}
    return {"data": data, "instr": instr, "qa": qa, "clip": clip, "llm": llm, "cache": cache, "kinds": kinds,
            "train_examples": len(examples), "test_questions": len(test_q), "ceilings": ceilings}


def _finished(tc) -> float | None:
    """Seconds of training logged by a finished run of exactly this stage in ``tc.out``, else None."""
    try:
        args = json.load(open(os.path.join(tc.out, "train_args.json")))
        log = [json.loads(x) for x in open(os.path.join(tc.out, "log.jsonl")) if x.strip()]
    except (OSError, ValueError):
        return None
    same = all(args.get(k) == getattr(tc, k) for k in ("stage", "branch", "model", "data", "batch_size", "lr", "seed"))
    if not (same and args.get("total_steps") == tc.max_steps and len(log) == tc.max_steps
            and os.path.exists(os.path.join(tc.out, "config.json"))):
        return None
    return sum(r["step_time_s"] for r in log)


def run_seed(shared: dict, work: str, seed: int, p: dict, lr: float, progress: bool) -> list[dict]:
    """Train and evaluate every row with connector seed ``seed``; one result dict per row."""
    from tqdm import tqdm

    from slotvlm.model import SlotVLM, SlotVLMConfig
    from slotvlm.train import TrainConfig, train

    root = os.path.join(work, f"seed{seed}")
    cfg = SlotVLMConfig(vision_model=shared["clip"], llm_model=shared["llm"], slot_dim=64, slot_hidden_dim=64,
                        proj_dim=64, max_frames=32, qformer_heads=4)
    inits = {"slots": cfg, "ssm": cfg.replace(event_encoder="slot_ssm"), "qformer": cfg.replace(connector="qformer"),
             "pooling": cfg.replace(connector="pooling")}
    for name, c in inits.items():
        SlotVLM.from_config(c, device="cpu", dtype=torch.float32, seed=seed).save_pretrained(os.path.join(root, f"init_{name}"))
    d = lambda name: os.path.join(root, name)  # noqa: E731
    n, s1 = p["steps"], p["stage1_steps"]
    # (result folder, stage, branch, model folders, steps)
    jobs = [
        ("s1", 1, None, [d("init_slots")], s1),
        ("slow", 2, "slow", [d("s1")], n),
        ("fast", 2, "fast", [d("s1")], n),
        ("slotvlm", 3, None, [d("s1"), d("slow"), d("fast")], n),
        ("s1_ssm", 1, "fast", [d("init_ssm")], s1),
        ("fast_ssm", 2, "fast", [d("s1_ssm")], n),
        ("ssm", 3, None, [d("s1_ssm"), d("slow"), d("fast_ssm")], n),
        ("q_slow", 2, "slow", [d("init_qformer")], n),
        ("q_fast", 2, "fast", [d("init_qformer")], n),
        ("qformer", 3, None, [d("init_qformer"), d("q_slow"), d("q_fast")], n),
        ("pooling", 3, None, [d("init_pooling")], 3 * n),
    ]
    secs, cpu, examples = {}, {}, {}
    for name, stage, branch, models, steps in tqdm(jobs, desc=f"seed {seed}: training", unit="stage",
                                                   disable=not progress):
        examples[name] = steps * p["batch_size"]
        tc = TrainConfig(stage=stage, branch=branch, model=models, features=shared["cache"], data=shared["instr"],
                         out=d(name), max_steps=steps, batch_size=p["batch_size"], lr=1e-3 if stage == 1 else lr,
                         seed=seed, progress=False)
        done = _finished(tc)
        if done is not None:  # an earlier run of the same stage in this --work folder: reuse it
            secs[name], cpu[name] = done, math.nan
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        train(tc)
        secs[name], cpu[name] = time.perf_counter() - t0, time.process_time() - c0
    parts = {"Slot-VLM": ("slotvlm", ["s1", "slow", "fast", "slotvlm"]), "Slow-only": ("slow", ["s1", "slow"]),
             "Fast-only": ("fast", ["s1", "fast"]), "Pooling": ("pooling", ["pooling"]),
             "Q-Former": ("qformer", ["q_slow", "q_fast", "qformer"]),
             "Slot-VLM (SSM)": ("ssm", ["s1_ssm", "slow", "fast_ssm", "ssm"])}
    out = []
    for row in tqdm(ROWS, desc=f"seed {seed}: evaluating", unit="row", disable=not progress):
        final, stages = parts[row]
        t0 = time.perf_counter()
        _, preds = evaluate(d(final), shared["cache"], shared["qa"])
        infer = (time.perf_counter() - t0) / len(preds)
        hits = {q["question_id"]: normalise(pr) == normalise(a) for q, pr, a in preds}
        tokens = SlotVLM.from_pretrained(d(final), device="cpu").connector.num_tokens
        train_s = sum(secs[s] for s in stages)
        instruct_steps = sum(j[4] for j in jobs if j[0] in stages and j[1] > 1)
        out.append({"row": row, "seed": seed, "tokens": tokens, "instruct_steps": instruct_steps,
                    **{f"acc_{m}": v for m, v in score(hits, shared["kinds"]).items()},
                    "train_s": train_s, "train_cpu_s": sum(cpu[s] for s in stages), "train_ms_per_example": 1e3 * train_s / sum(examples[s] for s in stages),
                    "infer_ms_per_question": 1e3 * infer})
    return out


# ------------------------------------------------------------------------------------------ reporting
def aggregate(results: list[dict]) -> list[dict]:
    """Per row: mean and standard error over seeds of every accuracy and time."""
    agg = []
    for row in ROWS:
        rs = [r for r in results if r["row"] == row]
        if not rs:
            continue
        a = {"row": row, "seeds": len(rs), "tokens": rs[0]["tokens"], "instruct_steps": rs[0]["instruct_steps"]}
        for k in [f"acc_{m}" for m in METRICS] + ["train_ms_per_example", "infer_ms_per_question"]:
            a[k], a[k + "_se"] = mean_se([r[k] for r in rs])
        agg.append(a)
    return agg


def _pct(m: float, se: float | None = None) -> str:
    if math.isnan(m):
        return "–"
    return f"{100 * m:.1f}" + ("" if se is None or math.isnan(se) else f" ± {100 * se:.1f}")


def markdown(agg: list[dict], ceilings: dict) -> str:
    cols = ["all", *TYPES, "needs_object", "needs_event", "needs_both"]
    head = ["model", "tokens", *cols, "train ms/example", "infer ms/question"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in agg:
        cells = [a["row"], str(a["tokens"])] + [_pct(a[f"acc_{c}"], a[f"acc_{c}_se"]) for c in cols]
        cells += [f"{a['train_ms_per_example']:.0f}", f"{a['infer_ms_per_question']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for name, s in ceilings.items():
        lines.append("| " + " | ".join([f"*{name}*", "–"] + [_pct(s[c]) for c in cols] + ["–", "–"]) + " |")
    return "\n".join(lines)


def plot(agg: list[dict], ceilings: dict, path: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = ["all", *TYPES]
    fig, ax = plt.subplots(figsize=(11, 4.2))
    width = 0.8 / max(1, len(agg))
    for i, a in enumerate(agg):
        xs = [g + (i - (len(agg) - 1) / 2) * width for g in range(len(groups))]
        ys = [100 * a[f"acc_{g}"] for g in groups]
        es = [0 if math.isnan(a[f"acc_{g}_se"]) else 100 * a[f"acc_{g}_se"] for g in groups]
        ax.bar(xs, ys, width, yerr=es, capsize=2, label=f"{a['row']} ({a['tokens']} tok)")
    for name, style in zip(CEILINGS[1:], ("k--", "k:")):
        ys = [100 * ceilings[name][g] for g in groups]
        for g, y in enumerate(ys):
            ax.plot([g - 0.45, g + 0.45], [y, y], style, lw=1, label=name if g == 0 else None)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("held-out exact match (%)")
    ax.set_xlabel("question type")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=3, loc="upper right")
    ax.set_ylim(0, 100)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_csv(path: str, results: list[dict], ceilings: dict, stamp: dict) -> str:
    fields = ["timestamp", "commit", "device", "torch", "label", "videos", "stage1_steps", "steps", "batch_size",
              "lr", "wall_s", "row", "seed", "tokens", "instruct_steps", *[f"acc_{m}" for m in METRICS],
              "train_s", "train_cpu_s", "train_ms_per_example", "infer_ms_per_question", "cpu_s"]
    rows = [{**stamp, **r} for r in results]
    rows += [{**stamp, "row": name, "seed": "-", **{f"acc_{m}": v for m, v in s.items()}} for name, s in ceilings.items()]
    rows = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    return str(append_csv(path, rows, fields))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="a CI-sized run (6 videos, 1 step per stage, 2 seeds)")
    mode.add_argument("--full", action="store_true", help="a GPU-sized run (1,000 videos, 3,000 steps per stage)")
    ap.add_argument("--steps", type=int, help="N, instruction-tuning steps per stage (default 300)")
    ap.add_argument("--stage1-steps", type=int, help="reconstruction steps of stage 1 (default 10)")
    ap.add_argument("--text-steps", type=int, help="steps teaching the reader (the frozen LLM) to answer from "
                    f"descriptions (default {_READER['text_steps']}; bench/table2_gates.py's reader)")
    ap.add_argument("--videos", type=int, help="synthetic videos, 20 %% held out (default 300)")
    ap.add_argument("--batch-size", type=int, help="global batch of every stage (default 16)")
    ap.add_argument("--seeds", type=int, nargs="+", help="connector seeds (default 0 1 2)")
    ap.add_argument("--lr", type=float, default=3e-3, help="stage 2/3 peak lr, cosine with 3 %% warm-up (default 3e-3)")
    ap.add_argument("--work", help="folder for data, models and caches (default: a temporary folder, deleted); "
                    "a rerun in the same folder reuses the finished stages of the same recipe")
    ap.add_argument("--jobs", type=int, default=1, help="seeds trained at once, one process each sharing the "
                    "threads (default 1; 2 on the 2-core machine halves the wall time of the 3 seeds)")
    ap.add_argument("--save", action="store_true", help="write table2.{csv,md,png} to bench/results/ (else a temp folder)")
    ap.add_argument("--label", help="a label for the CSV rows (default: the preset name)")
    args = ap.parse_args(argv)
    preset = "smoke" if args.smoke else "full" if args.full else "default"
    p = dict(PRESETS[preset])
    for k in ("steps", "stage1_steps", "text_steps", "videos", "batch_size", "seeds"):
        if getattr(args, k) is not None:
            p[k] = getattr(args, k)
    for k in ("steps", "stage1_steps", "text_steps", "videos", "batch_size"):
        if p[k] < 1:
            raise SystemExit(f"error: --{k.replace('_', '-')} must be >= 1, got {p[k]}")
    if args.jobs < 1:
        raise SystemExit(f"error: --jobs must be >= 1, got {args.jobs}")
    if p["videos"] < 5:
        raise SystemExit(f"error: --videos must be >= 5 (one fifth is held out), got {p['videos']}")
    progress = not args.smoke
    t_start = time.time()
    work = args.work or tempfile.mkdtemp(prefix="table2_")
    try:
        shared = prepare(work, p, progress)
        print(json.dumps({"train_examples": shared["train_examples"], "test_questions": shared["test_questions"],
                          "ceilings": shared["ceilings"]}, indent=1), flush=True)
        results = []
        if args.jobs == 1:
            for seed in p["seeds"]:
                results += run_seed(shared, work, seed, p, args.lr, progress)
                print(json.dumps(results[-len(ROWS):], indent=1), flush=True)
        else:  # one process per seed, ``--jobs`` at a time, each on its share of the threads
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            threads = max(1, torch.get_num_threads() // args.jobs)
            with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=torch.set_num_threads, initargs=(threads,)) as pool:
                futures = [pool.submit(run_seed, shared, work, seed, p, args.lr, False) for seed in p["seeds"]]
                for f in futures:
                    results += f.result()
                    print(json.dumps(results[-len(ROWS):], indent=1), flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.time() - t_start
    agg = aggregate(results)
    label = args.label or preset
    title = (f"{label}: {p['videos']} videos ({shared['test_questions']} held-out questions), N={p['steps']} steps/stage, "
             f"batch {p['batch_size']}, seeds {p['seeds']}, {wall / 60:.0f} min on {device_name('cpu')}; mean ± s.e.")
    out_dir = os.path.join(ROOT, "bench", "results") if args.save else tempfile.mkdtemp(prefix="table2_out_")
    os.makedirs(out_dir, exist_ok=True)
    stamp = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"), "commit": commit(),
             "device": device_name("cuda" if torch.cuda.is_available() else "cpu"), "torch": torch.__version__,
             "label": label, "videos": p["videos"], "stage1_steps": p["stage1_steps"], "steps": p["steps"],
             "batch_size": p["batch_size"], "lr": args.lr, "wall_s": round(wall, 1),
             "cpu_s": round(time.process_time(), 1)}
    csv_path = write_csv(os.path.join(out_dir, "table2.csv"), results, shared["ceilings"], stamp)
    md = f"{title}\n\n" + markdown(agg, shared["ceilings"])
    with open(os.path.join(out_dir, "table2.md"), "w") as f:
        f.write(md + "\n")
    png = plot(agg, shared["ceilings"], os.path.join(out_dir, "table2.png"), title)
    print(md)
    print(f"wrote {csv_path}, {os.path.join(out_dir, 'table2.md')}, {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
