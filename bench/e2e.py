"""Wall time from a video file to an answer, stage by stage, for one video and for a batch.

Stages: ``decode+sample`` (:func:`slotvlm.video.load_videos` at the model's fps, ``--load-workers``
videos at a time), ``preprocess`` (copy of the uint8 frames to the model's device, then
:func:`slotvlm.video.preprocess`), ``CLIP`` (:meth:`SlotVLM.vision_features`), ``connector``
(:meth:`SlotVLM.encode_features`: slow/fast pooling + slot attention + projection), ``LLM prefill``
(one forward pass over the prompt with the video tokens, filling the KV cache: the time to the
first token) and ``generation`` (the rest of greedy ``generate`` for ``--new-tokens`` tokens: its
total minus the prefill). Each stage is timed on its own, best of ``--repeat`` after a warm-up; a
full ``model.answer``-style run is timed too, as a check that the stages add up.

Models:

- default (CPU): the tiny random models of :func:`slotvlm.testing.make_tiny_slotvlm` — the video
  runtime costs are real, the model costs are not those of a real model;
- ``--full-size`` (GPU): CLIP ViT-L/14 and a 7B LLaMA built from their configs with random weights
  (no download) in bf16, and the paper's connector (slot dim 1024, 192 tokens).

Clips are H.264 360p at 30 fps, encoded once with PyAV into ``--clip-dir`` (outside the repo).

    nice -n 19 python bench/e2e.py                       # tiny models on CPU, ~1-2 min on 2 cores
    python bench/e2e.py --full-size --save               # on a GPU
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from video import SIZES, clip_path, commit, cpu_name, loadavg, make_clip  # noqa: E402  (bench/video.py)

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["decode+sample", "preprocess", "CLIP", "connector", "LLM prefill", "generation"]
QUESTION = "What is happening in the video? Describe the video in detail."

# openai/clip-vit-large-patch14 (vision tower) and a LLaMA-2 / Vicuna 7B, from their configs.
CLIP_L14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
LLAMA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5)


def tiny_model(tmp: str):
    from slotvlm import SlotVLM
    from slotvlm.testing import make_tiny_slotvlm

    return SlotVLM.from_pretrained(make_tiny_slotvlm(tmp), device="cpu", dtype=torch.float32).eval(), "tiny random CLIP + tiny LLaMA (slotvlm.testing)"


def full_size_model(device: str, dtype: torch.dtype):
    """CLIP ViT-L/14 + LLaMA-7B with random weights, built on the device directly."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from slotvlm import SlotVLM, SlotVLMConfig
    from slotvlm.model.slowfast import build_connector
    from slotvlm.testing import make_tiny_tokenizer

    tok = make_tiny_tokenizer()  # ids < 400: enough to build prompts for a random 32000-word model
    with torch.device(device):
        torch.set_default_dtype(dtype)
        try:
            vision = CLIPVisionModel(CLIPVisionConfig(**CLIP_L14, attn_implementation="sdpa"))
            llm = LlamaForCausalLM(LlamaConfig(**LLAMA_7B, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id, attn_implementation="sdpa"))
        finally:
            torch.set_default_dtype(torch.float32)
    cfg = SlotVLMConfig(vision_model="random:clip-vit-large-patch14", llm_model="random:llama-7b")
    dv, dl = CLIP_L14["hidden_size"], LLAMA_7B["hidden_size"]
    cfg.vision_hidden, cfg.image_size, cfg.llm_hidden = dv, CLIP_L14["image_size"], dl
    cfg.grid_size = CLIP_L14["image_size"] // CLIP_L14["patch_size"]
    connector = build_connector(cfg, dv, dl).float().to(device)
    model = SlotVLM(cfg, vision, llm, tok, connector).eval()
    return model, f"random-weight CLIP ViT-L/14 + LLaMA-7B ({str(dtype).replace('torch.', '')})"


def timed(fn, repeat: int, sync) -> tuple[float, object]:
    """(best seconds, last result) after one warm-up call."""
    out = fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run_scenario(model, paths: list[str], new_tokens: int, repeat: int, sync, load_workers: int = 2) -> tuple[dict, float, int]:
    """Per-stage seconds for answering one question about each of ``paths`` in one batch."""
    from slotvlm.video import load_videos, preprocess

    cfg = model.config
    dev = model.device
    t = {}
    t["decode+sample"], decoded = timed(
        lambda: [f for f, _ in load_videos(paths, fps=cfg.fps, max_frames=cfg.max_frames, workers=load_workers)],
        repeat, sync)
    # uint8 frames to the model's device, then pre-processing there (GPU: the Triton kernels)
    t["preprocess"], pixels = timed(lambda: [preprocess(f.to(dev), size=cfg.image_size) for f in decoded], repeat, sync)
    t["CLIP"], feats = timed(lambda: model.vision_features(torch.cat(pixels, 0)), repeat, sync)
    per_video = list(feats.split([p.shape[0] for p in pixels]))
    with torch.no_grad():
        t["connector"], embeds = timed(lambda: model.encode_features(per_video), repeat, sync)
        questions = [QUESTION] * len(paths)
        inputs = model.build_inputs(embeds, questions)
        t["LLM prefill"], _ = timed(lambda: model.llm(**inputs, use_cache=True), repeat, sync)
        tok = model.tokenizer
        gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, temperature=None,
                   top_p=None, top_k=None, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        t_gen, _ = timed(lambda: model.llm.generate(**inputs, **gen), repeat, sync)
    t["generation"] = max(t_gen - t["LLM prefill"], 0.0)

    def whole():
        px = [preprocess(f.to(dev), size=cfg.image_size)
              for f, _ in load_videos(paths, fps=cfg.fps, max_frames=cfg.max_frames, workers=load_workers)]
        with torch.no_grad():
            return model.llm.generate(**model.build_inputs(model.encode_video(px), questions), **gen)

    t_whole, _ = timed(whole, 1, sync)
    return t, t_whole, sum(int(p.shape[0]) for p in pixels)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Per-stage wall time from video file to answer (one video and a batch).",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--full-size", action="store_true",
                    help="random-weight CLIP ViT-L/14 + LLaMA-7B (needs a GPU with ~20 GB); default: tiny models")
    ap.add_argument("--device", default=None, help="default: cuda with --full-size, else cpu")
    ap.add_argument("--seconds", default="60", help="length of the single video (s)")
    ap.add_argument("--batch-seconds", default="60,45,30,20", help="lengths of the batch's videos (s)")
    ap.add_argument("--size", default="360p", choices=sorted(SIZES), help="clip frame size")
    ap.add_argument("--new-tokens", type=int, default=32, help="tokens generated per answer")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions per stage (best kept)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--load-workers", type=int, default=2, help="videos decoded at a time (slotvlm.video.load_videos)")
    ap.add_argument("--clip-dir", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                    / "slotvlm" / "bench-clips", help="where the encoded clips are cached")
    ap.add_argument("--save", action="store_true", help="append rows to bench/results/ (default: a temp folder)")
    ap.add_argument("--csv", type=Path, default=None, help="CSV to append to (overrides --save's path)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if args.full_size else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {device}: no CUDA device here (the --full-size run needs a GPU)")
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    torch.manual_seed(0)

    args.clip_dir.mkdir(parents=True, exist_ok=True)
    h, w = SIZES[args.size]

    def clip(seconds: float) -> str:
        p = clip_path(args.clip_dir, "h264", args.size, seconds, 30, 250)
        if not p.exists():
            print(f"encoding {p.name} ...", flush=True)
            make_clip(p, "h264", h, w, seconds, 30, 250)
        return str(p)

    one = [clip(float(args.seconds))]
    batch = [clip(float(s)) for s in args.batch_seconds.split(",") if s]
    with tempfile.TemporaryDirectory() as tmp:
        model, what = full_size_model(device, torch.bfloat16) if args.full_size else tiny_model(tmp)
        dev_name = torch.cuda.get_device_name() if device.startswith("cuda") else f"{cpu_name()} ({os.cpu_count()} cores)"
        print(f"device: {dev_name}, {torch.get_num_threads()} torch threads, load {loadavg()}; models: {what}; "
              f"torch {torch.__version__}; commit {commit()}")
        results = []
        for name, paths in ((f"1 video ({args.seconds} s)", one), (f"batch of {len(batch)} ({args.batch_seconds} s)", batch)):
            t, t_whole, n_frames = run_scenario(model, paths, args.new_tokens, args.repeat, sync, args.load_workers)
            results.append((name, t, t_whole, n_frames))

    total_w = 12
    print(f"\n{'stage':<16}" + "".join(f"{name[:28]:>30}" for name, *_ in results))
    for st in STAGES:
        cells = []
        for _, t, _, _ in results:
            tot = sum(t.values())
            cells.append(f"{1e3 * t[st]:>{total_w}.1f} ms ({100 * t[st] / tot:4.1f} %)")
        print(f"{st:<16}" + "".join(f"{c:>30}" for c in cells))
    print(f"{'sum of stages':<16}" + "".join(f"{1e3 * sum(t.values()):>{total_w}.1f} ms{'':>12}" for _, t, _, _ in results))
    print(f"{'whole run':<16}" + "".join(f"{1e3 * tw:>{total_w}.1f} ms{'':>12}" for _, _, tw, _ in results))
    print(f"{'frames':<16}" + "".join(f"{n:>{total_w}d}{'':>15}" for *_, n in results))

    slug = re.sub(r"[^a-z0-9]+", "-", dev_name.lower()).strip("-")
    out = args.csv or (ROOT / "bench" / "results" if args.save else Path(tempfile.mkdtemp(prefix="slotvlm-e2e-"))) / f"e2e-{slug}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    with open(out, "a", newline="", encoding="utf-8") as f:
        wr = csv.writer(f)
        if new:
            wr.writerow(["timestamp", "commit", "device", "torch_threads", "loadavg", "torch", "models", "scenario",
                         "frames", "new_tokens", "stage", "ms", "share", "note"])
        for name, t, t_whole, n in results:
            tot = sum(t.values())
            rows = [(st, t[st]) for st in STAGES] + [("sum of stages", tot), ("whole run", t_whole)]
            for st, sec in rows:
                wr.writerow([stamp, commit(), dev_name, torch.get_num_threads(), loadavg(), torch.__version__, what, name,
                             n, args.new_tokens, st, f"{1e3 * sec:.2f}", f"{sec / tot:.4f}",
                             "loaded shared machine; best of repeats" if not device.startswith("cuda") else ""])
    print(f"appended rows to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
