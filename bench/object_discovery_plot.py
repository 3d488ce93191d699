"""Plot held-out FG-ARI / mBO against training steps for `slotvlm discover` runs side by side.

    python bench/object_discovery_plot.py --runs ours=/tmp/runs/ours pkg=/tmp/runs/pkg \
        --out bench/results/object_discovery.png --title "Tetrominoes-like, CPU recipe"

Each run folder's ``log.jsonl`` gives the curve; ``LABEL=FOLDER`` names it in the legend.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--runs", nargs="+", required=True, help="LABEL=FOLDER pairs (slotvlm discover --out folders)")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--title", default="", help="figure title")
    p.add_argument("--paired", action="store_true",
                   help="runs come in pairs (e.g. ours, package of one seed): a pair shares a colour, "
                        "its second run is dashed")
    p.add_argument("--max-step", type=int, default=None,
                   help="plot only steps up to this one (compare runs of different lengths)")
    args = p.parse_args(argv)
    if args.max_step is not None and args.max_step < 1:
        raise SystemExit(f"--max-step: expected a positive step, got {args.max_step}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slotvlm.discover import read_log

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for i, spec in enumerate(args.runs):
        if "=" not in spec:
            raise SystemExit(f"--runs: expected LABEL=FOLDER, got {spec!r}")
        label, folder = spec.split("=", 1)
        rows = read_log(folder)
        if not rows:
            raise SystemExit(f"--runs: {folder!r} has no log.jsonl")
        if args.max_step is not None:
            rows = [r for r in rows if r.get("step", 0) <= args.max_step]
        ev = [r for r in rows if "fg_ari" in r]
        tr = [r for r in rows if "loss" in r]
        if args.paired:
            style = dict(color=f"C{i // 2}", ls="--" if i % 2 else "-")
        else:
            style = dict(color=f"C{i}", ls="-")
        axes[0].plot([r["step"] for r in ev], [r["fg_ari"] for r in ev], label=label, marker="o", ms=2, **style)
        axes[1].plot([r["step"] for r in ev], [r["mbo"] for r in ev], label=label, marker="o", ms=2, **style)
        if tr:
            k = max(1, len(tr) // 100)  # a light running mean
            steps = [r["step"] for r in tr][k - 1:]
            loss = [sum(r["loss"] for r in tr[i - k + 1:i + 1]) / k for i in range(k - 1, len(tr))]
            axes[2].plot(steps, loss, label=label, lw=1, **style)
    for ax, name in zip(axes, ("held-out FG-ARI", "held-out mBO", "training MSE")):
        ax.set_xlabel("training step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[2].set_yscale("log")
    fig.suptitle(args.title, fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
