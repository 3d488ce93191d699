"""Diagnose an object-discovery run, or the tetromino data itself (issue 24).

    python bench/discover_diagnose.py --data                 # what FG-ARI the scenes allow a colour grouping
    python bench/discover_diagnose.py --run runs/tetro       # attention-map vs decoder-mask FG-ARI of a run

``--data``: on 2,048 held-out tetromino scenes, the background colours, the fraction of scenes with
touching pieces and with touching pieces *of the same colour* (then only shape tells them apart), and
the FG-ARI of labelling each 4-connected same-colour component as one object (the score of a model
that groups by colour and adjacency alone, a ceiling for one that has not learned shapes).

``--run OUT``: for a ``slotvlm discover --out OUT`` folder, the FG-ARI / mBO of the argmax of the
slot-attention maps (last iteration, each 7×7 cell upsampled) beside those of the decoder's alpha
masks, and how sharp the attention is (mean over inputs of the largest slot weight). Attention
scoring as low as the decoder means the grouping, not the decoder, is the limit.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def data_report(n: int = 2048, seed: int = 0) -> dict:
    from scipy import ndimage

    from slotvlm import metrics
    from slotvlm.data import scenes

    im, m = scenes.generate("tetrominoes", n, seed=seed, split="test")
    b = scenes.TETRO_BLOCK
    lab, col = m[:, ::b, ::b], im[:, ::b, ::b]
    touch = same = 0
    pred = np.zeros_like(lab)
    for i in range(n):
        pairs = set()
        for a, c in ((lab[i, :-1], lab[i, 1:]), (lab[i, :, :-1], lab[i, :, 1:])):
            sel = (a != c) & (a > 0) & (c > 0)
            pairs |= {(min(x, y), max(x, y)) for x, y in zip(a[sel], c[sel])}
        colour = {k: tuple(col[i][lab[i] == k][0]) for k in np.unique(lab[i]) if k}
        touch += bool(pairs)
        same += any(colour[x] == colour[y] for x, y in pairs)
        nxt = 1
        for c in np.unique(col[i].reshape(-1, 3), axis=0):
            if not c.any():
                continue
            sel = (col[i] == c).all(-1)
            cc, k = ndimage.label(sel)
            pred[i][sel] = cc[sel] + nxt
            nxt += k
    full = pred.repeat(b, 1).repeat(b, 2)
    ceiling = float(np.nanmean(metrics.fg_ari(torch.from_numpy(m), torch.from_numpy(full)).numpy()))
    return {"scenes": n, "background_colours": np.unique(im[m == 0].reshape(-1, 3), axis=0).tolist(),
            "touching": touch / n, "same_colour_touching": same / n, "colour_component_fg_ari": ceiling}


@torch.no_grad()
def run_report(out: str, n: int = 256) -> dict:
    from safetensors.torch import load_file

    from slotvlm import metrics
    from slotvlm.data import scenes
    from slotvlm.discover import DiscoverConfig, SlotAutoencoder, to_input

    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        cfg = DiscoverConfig(**json.load(f))
    size = scenes.image_size(cfg.family)
    model = SlotAutoencoder(cfg, size)
    model.load_state_dict(load_file(os.path.join(out, "model.safetensors")))
    model.eval()
    im, m = scenes.generate(cfg.family, n, seed=cfg.seed, split="test")
    x, true = to_input(im, "cpu"), torch.from_numpy(m)
    torch.manual_seed(cfg.seed)
    feats = model.encoder(x).permute(0, 2, 3, 1)
    g = feats.shape[1]
    _, attn = model.slot_attention(model.enc_mlp(model.enc_pos(feats).flatten(1, 2)), return_attn=True)
    s = -(-size // g)
    a = attn.reshape(n, -1, g, g).repeat_interleave(s, 2).repeat_interleave(s, 3)[..., :size, :size].argmax(1)
    torch.manual_seed(cfg.seed)
    d = model(x)["masks"].argmax(1)
    mean = lambda t: float(np.nanmean(t.numpy()))  # noqa: E731
    return {"attention_fg_ari": mean(metrics.fg_ari(true, a)), "attention_mbo": mean(metrics.mean_best_overlap(true, a)),
            "decoder_fg_ari": mean(metrics.fg_ari(true, d)), "decoder_mbo": mean(metrics.mean_best_overlap(true, d)),
            "attention_max_weight": float(attn.max(1).values.mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="store_true", help="report on the tetromino scenes")
    ap.add_argument("--run", help="a slotvlm discover --out folder")
    ap.add_argument("--scenes", type=int, help="held-out scenes (default 2048 for --data, 256 for --run)")
    args = ap.parse_args(argv)
    if not args.data and not args.run:
        ap.error("give --data and/or --run OUT")
    torch.set_num_threads(1)
    if args.data:
        print(json.dumps(data_report(args.scenes or 2048)))
    if args.run:
        print(json.dumps(run_report(args.run, args.scenes or 256)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
