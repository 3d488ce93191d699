"""Do Slot-VLM's object slots segment objects better after stage 1? A small CPU run on synthetic data.

    OMP_NUM_THREADS=1 python bench/eval_slots_synth.py --out /tmp/slots_run

Tiny random CLIP and LLaMA (no downloads), ``slotvlm synth`` videos, the feature cache, then
``slotvlm eval-slots`` (held-out videos) on: the untrained connector, after stage 1 (slot
reconstruction), and after a short stage 2 of the object branch. Rows are appended to
``bench/results/eval_slots_synth.csv``. With a *random* CLIP the features carry colour and position
only through random weights, so these numbers measure the slot machinery, not CLIP's semantics.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--out", required=True, help="work folder")
    ap.add_argument("--videos", type=int, default=60, help="synthetic videos (20 %% held out)")
    ap.add_argument("--stage1-steps", type=int, default=300)
    ap.add_argument("--stage1-branch", default=None, choices=["slow", "fast"],
                    help="stage 1 trains only this branch (default both)")
    ap.add_argument("--slot-dim", type=int, default=64, help="connector slot width")
    ap.add_argument("--stage2-steps", type=int, default=0, help="stage 2 (object branch) steps; 0 = skip")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--csv", default=os.path.join(ROOT, "bench", "results", "eval_slots_synth.csv"))
    args = ap.parse_args(argv)

    from slotvlm.data import synth
    from slotvlm.data.features import extract
    from slotvlm.discover import machine_name
    from slotvlm.eval.slots import evaluate_slots
    from slotvlm.model import SlotVLM, SlotVLMConfig
    from slotvlm.testing import make_tiny_clip, make_tiny_llm
    from slotvlm.train import TrainConfig, train

    out = args.out
    data = os.path.join(out, "data")
    if not os.path.exists(os.path.join(data, "meta.json")):
        synth.generate(data, args.videos, seed=args.seed)
    clip, llm = os.path.join(out, "clip"), os.path.join(out, "llm")
    if not os.path.exists(os.path.join(clip, "config.json")):
        make_tiny_clip(clip, seed=args.seed, hidden_size=64, intermediate_size=128, num_attention_heads=4)
        make_tiny_llm(llm, seed=args.seed)
    cache = os.path.join(out, "cache")
    extract(os.path.join(data, "videos"), clip, cache, batch_size=32)
    cfg = SlotVLMConfig(vision_model=clip, llm_model=llm, slot_dim=args.slot_dim, slot_hidden_dim=args.slot_dim,
                        proj_dim=args.slot_dim, max_frames=32,
                        qformer_heads=4)
    init = os.path.join(out, "init")
    SlotVLM.from_config(cfg, device="cpu", dtype=torch.float32, seed=args.seed).save_pretrained(init)
    stages = [("untrained connector", init, 0, 0.0)]
    s1 = os.path.join(out, "stage1")
    t0 = time.time()
    if not os.path.exists(os.path.join(s1, "connector.safetensors")):
        train(TrainConfig(stage=1, model=[init], features=cache, out=s1, max_steps=args.stage1_steps, batch_size=8,
                          lr=1e-3, seed=args.seed, branch=args.stage1_branch))
    stages.append((f"stage 1 ({args.stage1_branch or 'both'} branch{'es' if not args.stage1_branch else ''})", s1, args.stage1_steps, time.time() - t0))
    if args.stage2_steps:
        s2 = os.path.join(out, "stage2_slow")
        t0 = time.time()
        if not os.path.exists(os.path.join(s2, "connector.safetensors")):
            train(TrainConfig(stage=2, branch="slow", model=[s1], features=cache,
                              data=os.path.join(data, "instructions.json"), out=s2, max_steps=args.stage2_steps,
                              batch_size=8, lr=3e-3, seed=args.seed))
        stages.append(("stage 2 (object branch)", s2, args.stage2_steps, time.time() - t0))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    new = not os.path.exists(args.csv)
    with open(args.csv, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["timestamp", "commit", "machine", "videos", "test_videos", "stage", "steps", "train_s",
                        "resolution", "object_fg_ari", "object_mbo", "object_miou", "event_ari", "event_videos"])
        for name, folder, steps, secs in stages:
            model = SlotVLM.from_pretrained(folder, dtype=torch.float32)
            for resolution in ("frame", "patch"):
                r = evaluate_slots(model, data, resolution=resolution, progress=False)
                print(json.dumps({"stage": name, **r}))
                w.writerow([time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), commit, machine_name(), args.videos,
                            r["videos"], name, steps, f"{secs:.0f}", resolution, f"{r.get('object_fg_ari', float('nan')):.4f}",
                            f"{r.get('object_mbo', float('nan')):.4f}", f"{r.get('object_miou', float('nan')):.4f}",
                            f"{r.get('event_ari', float('nan')):.4f}", r.get("event_videos", "")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
