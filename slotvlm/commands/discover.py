"""``slotvlm discover``: train the slot attention autoencoder on procedural multi-object scenes and
measure whether its slots find the objects (FG-ARI, mBO on held-out scenes). See docs/object_discovery.md.

    slotvlm discover --out runs/tetro --max-minutes 30                 # the CPU recipe (Tetrominoes-like)
    slotvlm discover --out runs/tetro_gpu --preset gpu                 # the paper's settings, on cuda
    slotvlm discover --out runs/tetro --resume                         # continue after an interruption
    slotvlm discover --out runs/tetro_pkg --module slot-attention      # the PyPI package in the same harness
    slotvlm discover --family multi_dsprites --out runs/msp --max-minutes 30
    slotvlm discover --out runs/wide --slot-dim 64 --dec-kernel 5      # any setting overrides the preset
    slotvlm discover ... --csv bench/results/object_discovery.csv --label cpu-recipe   # append the result row
"""
from __future__ import annotations

import argparse
import json

HELP = "object discovery: train a slot attention autoencoder on synthetic scenes, report FG-ARI / mBO"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..discover import PRESETS, DiscoverConfig  # noqa: PLC0415  (light: torch + numpy)

    d = DiscoverConfig(out="")
    cpu = PRESETS["cpu"]["tetrominoes"]

    def default(name: str) -> str:
        """The help text's default: the CPU preset's value for tetrominoes (where it sets one)."""
        v = cpu.get(name, getattr(d, name))
        return f"default: the preset's; cpu on tetrominoes {v}"

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 2)[2]
    parser.add_argument("--out", required=True, help="output folder (config, log.jsonl, checkpoints, figures)")
    parser.add_argument("--family", default=d.family, choices=["tetrominoes", "multi_dsprites"],
                        help="scene family (default tetrominoes: 35×35, 3 pieces; multi_dsprites: 64×64, 2–5 sprites)")
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS),
                        help="recipe the settings below start from (default cpu: the ablated CPU recipe, ~30 min "
                             "on one thread; gpu: the Slot Attention paper's settings, --device cuda); "
                             "docs/object_discovery.md lists both")
    parser.add_argument("--module", default=d.module, choices=["slotvlm", "slot-attention"],
                        help="slot attention implementation: ours (default) or the PyPI slot-attention package")
    parser.add_argument("--backend", default=None, choices=["auto", "torch", "triton"],
                        help="backend of slotvlm.SlotAttention (default: $SLOTVLM_BACKEND, else auto)")
    parser.add_argument("--steps", type=int, help=f"optimizer steps ({default('steps')})")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop after this much training time (evaluates and saves first)")
    parser.add_argument("--batch-size", type=int, help=f"scenes per step ({default('batch_size')})")
    parser.add_argument("--lr", type=float, help=f"Adam peak learning rate ({default('lr')})")
    parser.add_argument("--warmup", type=int, help=f"linear warm-up steps ({default('warmup')})")
    parser.add_argument("--decay-half-life", type=int,
                        help="after warm-up the lr halves every this many steps (default: the preset's; cpu: constant)")
    parser.add_argument("--num-slots", type=int, default=None, help="slots (default: max objects + 1)")
    parser.add_argument("--slot-dim", type=int, help=f"slot width ({default('slot_dim')})")
    parser.add_argument("--mlp-hidden", type=int, help=f"MLP hidden width ({default('mlp_hidden')})")
    parser.add_argument("--slot-init", choices=("gaussian", "learned"),
                        help="slot initialisation: gaussian (sampled per call) or learned (a per-slot query table) "
                             f"({default('slot_init')})")
    parser.add_argument("--iters", type=int, help=f"slot attention iterations ({default('iters')})")
    parser.add_argument("--enc-channels", type=int, help=f"encoder channels ({default('enc_channels')})")
    parser.add_argument("--enc-layers", type=int, help=f"encoder conv layers ({default('enc_layers')})")
    parser.add_argument("--enc-kernel", type=int, help=f"encoder kernel size ({default('enc_kernel')})")
    parser.add_argument("--enc-stride", type=int,
                        help="stride of the first encoder conv (default: the preset's; cpu: 5 on tetrominoes, "
                             "35×35 -> 7×7 slot inputs, 4 on multi_dsprites; gpu: 1)")
    parser.add_argument("--dec-channels", type=int, help=f"decoder channels ({default('dec_channels')})")
    parser.add_argument("--dec-layers", type=int, help=f"decoder layers ({default('dec_layers')})")
    parser.add_argument("--dec-kernel", type=int,
                        help="decoder kernel size (default: the preset's; cpu 1, a per-cell MLP; gpu 5, the paper's)")
    parser.add_argument("--dec-stride", type=int,
                        help="decode on a (size/stride)² grid, then upsample with a stride-s transposed conv "
                             "(default: the preset's; cpu: as --enc-stride; gpu 1, full resolution)")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of scenes, initialisation and slot noise")
    parser.add_argument("--test-scenes", type=int, default=d.test_scenes, help=f"held-out scenes (default {d.test_scenes})")
    parser.add_argument("--eval-every", type=int,
                        help=f"evaluate (and draw a figure) every N steps ({default('eval_every')})")
    parser.add_argument("--save-every", type=int, default=None, help="checkpoint every N steps (default: --eval-every)")
    parser.add_argument("--figure-scenes", type=int, default=d.figure_scenes, help="scenes per figure (0: none)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--device", help="torch device (default: the preset's; cpu: cpu, gpu: cuda)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--csv", default=None, help="append the final result as a row to this CSV")
    parser.add_argument("--label", default="", help="free text for the CSV row's label column (e.g. cpu-recipe)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415

    from ..discover import DiscoverConfig, append_csv, train  # noqa: PLC0415

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise ValueError(f"--max-minutes must be > 0, got {args.max_minutes}")
    cfg = DiscoverConfig.from_preset(
        args.preset, args.family, out=args.out, module=args.module, backend=args.backend, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, decay_half_life=args.decay_half_life,
        num_slots=args.num_slots, slot_dim=args.slot_dim, mlp_hidden=args.mlp_hidden, iters=args.iters,
        slot_init=args.slot_init,
        enc_channels=args.enc_channels, enc_layers=args.enc_layers, enc_kernel=args.enc_kernel,
        enc_stride=args.enc_stride, dec_channels=args.dec_channels, dec_layers=args.dec_layers,
        dec_kernel=args.dec_kernel, dec_stride=args.dec_stride, seed=args.seed,
        test_scenes=args.test_scenes, eval_every=args.eval_every, save_every=args.save_every,
        figure_scenes=args.figure_scenes, resume=args.resume, device=args.device, progress=not args.no_progress,
        max_seconds=None if args.max_minutes is None else args.max_minutes * 60,
    )
    result = train(cfg)
    if args.csv:
        append_csv(args.csv, cfg, result, label=args.label)
    print(json.dumps(result))
    return 0
