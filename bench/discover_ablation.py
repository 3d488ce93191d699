"""Object-discovery ablation: one change at a time from a base recipe, equal steps, held-out FG-ARI.

    python bench/discover_ablation.py --save                 # every row, seed 0, 8,000 steps each, 2 at a time
    python bench/discover_ablation.py --only base dec-mlp64  # some rows
    python bench/discover_ablation.py --smoke                # the CI-sized run of the tests

Each row trains ``slotvlm.discover`` on the Tetrominoes-like scenes from the same seed for the same
number of steps (the batches and the slot noise are a pure function of (seed, step), so rows
differ only by their change), one torch thread per run, ``--jobs`` runs at a time, and reports
the held-out FG-ARI / ARI on argmax masks, the soft FG-ARI and mBO of the last evaluation, and
the best FG-ARI over the evaluations (every ``--eval-every`` steps). ``base`` is the recipe the
ablation started from (issue 24): one 5×5 stride-5 encoder conv, a 3-layer 5×5 decoder of width 32
on the 7×7 grid, lr 1e-3 with 100 warm-up steps, constant; ``cpu-preset`` is what
``slotvlm discover --preset cpu`` runs. With ``--save`` the rows go to
bench/results/object_discovery_ablation.{csv,md}; else to a temporary folder.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path[:0] = [ROOT, BENCH]

from _common import append_csv, commit, device_name  # noqa: E402

BASE = dict(enc_layers=1, enc_kernel=5, enc_stride=5, dec_channels=32, dec_layers=3, dec_kernel=5, dec_stride=5,
            lr=1e-3, warmup=100)
# name -> (what changes, the overrides of BASE)
VARIANTS = {
    "base": ("the ablation's starting recipe", {}),
    "enc-3-layers": ("encoder: 3 conv layers (5×5 context) instead of 1", dict(enc_layers=3)),
    "enc-kernel-3": ("encoder: kernel 3 at stride 5 (sees part of each cell)", dict(enc_kernel=3)),
    "slots-5": ("5 slots instead of 4 (max objects + 1)", dict(num_slots=5)),
    "wide-slots": ("slot dim 64, MLP 128 (instead of 32, 64)", dict(slot_dim=64, mlp_hidden=128)),
    "lr-4e-4": ("lr 4e-4 instead of 1e-3", dict(lr=4e-4)),
    "lr-decay": ("lr halves every 2,500 steps after warm-up", dict(decay_half_life=2500)),
    "dec-mlp64": ("decoder: per-cell MLP of width 64 (1×1 convs) on the 7×7 grid", dict(dec_kernel=1, dec_channels=64)),
    "dec-mlp128": ("decoder: per-cell MLP of width 128", dict(dec_kernel=1, dec_channels=128)),
    "dec-mlp128-4": ("decoder: per-cell MLP of width 128, 4 layers", dict(dec_kernel=1, dec_channels=128, dec_layers=4)),
    "dec-mlp64-decay": ("dec-mlp64 + lr halving every 2,500 steps", dict(dec_kernel=1, dec_channels=64, decay_half_life=2500)),
    "dec-mlp64-iters5": ("dec-mlp64 + 5 slot-attention iterations", dict(dec_kernel=1, dec_channels=64, iters=5)),
    "dec-mlp64-slots5": ("dec-mlp64 + 5 slots (room for a background slot)", dict(dec_kernel=1, dec_channels=64, num_slots=5)),
    "dec-mlp64-learned": ("dec-mlp64 + learned slot init (a per-slot query table, no sampling)",
                          dict(dec_kernel=1, dec_channels=64, slot_init="learned")),
    "dec-mlp64-learned-decay": ("dec-mlp64 + learned slot init + lr halving every 10,000 steps (= the CPU preset)",
                                dict(dec_kernel=1, dec_channels=64, slot_init="learned", decay_half_life=10_000)),
}
PRESETS = {"default": dict(steps=8000, eval_every=1000, seeds=[0], test_scenes=256),
           "smoke": dict(steps=2, eval_every=1, seeds=[0], test_scenes=8)}


def _run(job: tuple) -> dict:
    """One row, in a worker process: one torch thread, the run's folder under ``work``."""
    import torch

    from slotvlm.discover import DiscoverConfig, read_log, train

    name, seed, p, work, smoke = job
    torch.set_num_threads(1)
    over = dict(VARIANTS[name][1]) if name != "cpu-preset" else {}
    tiny = dict(batch_size=4, slot_dim=8, mlp_hidden=8, enc_channels=8, dec_channels=8) if smoke else {}
    kw = dict(out=os.path.join(work, f"{name}-s{seed}"), seed=seed, steps=p["steps"], eval_every=p["eval_every"],
              test_scenes=p["test_scenes"], figure_scenes=0, progress=False)
    if name == "cpu-preset":
        cfg = DiscoverConfig.from_preset("cpu", "tetrominoes", **kw, **tiny)
    else:
        cfg = DiscoverConfig(**{**BASE, **over, **kw, **tiny})
    t0 = time.time()
    result = train(cfg)
    evals = [r for r in read_log(cfg.out) if "fg_ari" in r]
    return {"variant": name, "change": VARIANTS[name][0] if name in VARIANTS else "slotvlm discover --preset cpu",
            "seed": seed, "steps": result["steps"], "batch": cfg.batch_size, "wall_s": round(time.time() - t0, 1),
            **{k: round(result[k], 4) for k in ("fg_ari", "ari", "fg_ari_soft", "mbo", "miou")},
            "best_fg_ari": round(max(r["fg_ari"] for r in evals), 4)}


def markdown(rows: list[dict]) -> str:
    base = {r["seed"]: r["fg_ari"] for r in rows if r["variant"] == "base"}
    lines = ["| variant | change | steps | FG-ARI (last / best) | Δ vs base | soft FG-ARI | mBO |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        d = f"{r['fg_ari'] - base[r['seed']]:+.3f}" if r["seed"] in base else "–"
        lines.append(f"| {r['variant']} | {r['change']} | {r['steps']} | {r['fg_ari']:.3f} / {r['best_fg_ari']:.3f} | {d} "
                     f"| {r['fg_ari_soft']:.3f} | {r['mbo']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [*VARIANTS, "cpu-preset"]
    ap.add_argument("--only", nargs="+", choices=names, metavar="VARIANT", help=f"rows to run (default all: {' '.join(names)})")
    ap.add_argument("--steps", type=int, help="steps per row (default 8000)")
    ap.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs at a time, one thread each (default min(2, CPUs))")
    ap.add_argument("--smoke", action="store_true", help="CI size: 2 steps, tiny widths, 8 test scenes")
    ap.add_argument("--save", action="store_true", help="write bench/results/object_discovery_ablation.{csv,md}")
    args = ap.parse_args(argv)
    p = dict(PRESETS["smoke" if args.smoke else "default"])
    if args.steps is not None:
        if args.steps < 1:
            raise SystemExit(f"error: --steps must be >= 1, got {args.steps}")
        p["steps"], p["eval_every"] = args.steps, min(p["eval_every"], args.steps)
    if args.jobs < 1:
        raise SystemExit(f"error: --jobs must be >= 1, got {args.jobs}")
    seeds = args.seeds or p["seeds"]
    out_dir = os.path.join(ROOT, "bench", "results") if args.save else tempfile.mkdtemp(prefix="discover_ablation_")
    work = tempfile.mkdtemp(prefix="discover_ablation_runs_")
    jobs = [(n, s, p, work, args.smoke) for s in seeds for n in (args.only or names)]
    t0 = time.time()
    if args.jobs == 1:
        rows = [_run(j) for j in jobs]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows = []
            for r in pool.map(_run, jobs):
                print(f"{r['variant']:16s} seed {r['seed']}: FG-ARI {r['fg_ari']:.3f} (best {r['best_fg_ari']:.3f}) "
                      f"mBO {r['mbo']:.3f} {r['wall_s']:.0f}s", flush=True)
                rows.append(r)
    import torch

    stamp = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"), "commit": commit(), "device": device_name("cpu"),
             "torch": torch.__version__, "label": "smoke" if args.smoke else "default"}
    fields = [*stamp, "variant", "change", "seed", "steps", "batch", "fg_ari", "best_fg_ari", "ari", "fg_ari_soft", "mbo", "miou", "wall_s"]
    csv_path = append_csv(os.path.join(out_dir, "object_discovery_ablation.csv"), [{**stamp, **r} for r in rows], fields)
    md = (f"Tetrominoes-like, seeds {seeds}, {p['steps']} steps × batch {rows[0]['batch']} per row, {p['test_scenes']} held-out scenes, "
          f"{(time.time() - t0) / 60:.0f} min on {device_name('cpu')} ({args.jobs} runs at a time, one thread each)\n\n"
          + markdown(rows))
    with open(os.path.join(out_dir, "object_discovery_ablation.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    print(f"wrote {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
