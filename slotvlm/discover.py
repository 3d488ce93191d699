"""Unsupervised object discovery: the slot attention autoencoder of Locatello et al. (2020).

image ``[B, 3, H, W]`` → CNN encoder → soft position embedding → LayerNorm + MLP → slot attention
(``slotvlm.SlotAttention``, or the PyPI ``slot_attention`` package with ``module="slot-attention"``)
→ spatial broadcast decoder, one RGB + alpha map per slot → alpha compositing (softmax over slots)
→ MSE to the input. The per-slot alpha masks are the predicted segmentation; FG-ARI / mBO are
measured against the scenes' ground truth (:mod:`slotvlm.metrics`) on held-out scenes
(:mod:`slotvlm.data.scenes`, ``split="test"``).

Output folder::

    OUT/config.json                 the run's configuration
    OUT/log.jsonl                   one line per logged step: loss, lr, seconds; eval lines add fg_ari, ari (argmax masks), fg_ari_soft, ari_soft, mbo, miou
    OUT/checkpoints/step_000500/    model.safetensors, optim.safetensors, state.json (tensors and JSON only)
    OUT/figures/step_000500.png     input, reconstruction, per-slot masks and reconstructions
    OUT/model.safetensors           the final weights
    OUT/result.json                 the final evaluation

The batches are a pure function of ``(seed, step)`` and the slot-init noise is re-seeded from
``(seed, step)`` each step, so a resumed run follows the uninterrupted one.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import nn

from ._sysinfo import cpu_name
from .data import scenes

MODULES = ("slotvlm", "slot-attention")


@dataclass
class DiscoverConfig:
    """Settings of one object-discovery run (see ``slotvlm discover --help``)."""

    out: str
    family: str = "tetrominoes"
    module: str = "slotvlm"
    backend: str | None = None
    steps: int = 3000
    batch_size: int = 32
    lr: float = 4e-4
    warmup: int = 200
    decay_half_life: int | None = None  # steps for the lr to halve after warm-up (None: constant)
    num_slots: int | None = None  # default: max objects + 1
    slot_dim: int = 32
    mlp_hidden: int = 64
    iters: int = 3
    slot_init: str = "gaussian"  # "gaussian" (sampled each call) or "learned" (a per-slot query table)
    enc_channels: int = 32
    enc_layers: int = 3
    enc_kernel: int = 5
    enc_stride: int = 1  # stride of the first encoder convolution: (size/stride)² slot-attention inputs
    dec_channels: int = 32
    dec_layers: int = 3
    dec_kernel: int = 1  # 1: a per-pixel MLP on the broadcast slot + position (fast on CPU)
    dec_stride: int = 1  # >1: broadcast on a (size/stride)² grid, convolve there, then a stride-s transposed conv
    max_grad_norm: float = 1.0
    seed: int = 0
    test_scenes: int = 256
    eval_every: int = 250
    save_every: int | None = None  # default: eval_every
    figure_scenes: int = 4
    max_seconds: float | None = None  # stop (evaluate, save) once training has run this long
    resume: bool = False
    device: str = "cpu"
    progress: bool = True

    def validate(self) -> "DiscoverConfig":
        if self.family not in scenes.FAMILIES:
            raise ValueError(f"family must be one of {scenes.FAMILIES}, got {self.family!r}")
        if self.module not in MODULES:
            raise ValueError(f"module must be one of {MODULES}, got {self.module!r}")
        if self.slot_init not in ("gaussian", "learned"):
            raise ValueError(f"slot_init must be 'gaussian' or 'learned', got {self.slot_init!r}")
        if self.module == "slot-attention" and self.slot_init != "gaussian":
            raise ValueError(f"slot_init={self.slot_init!r} applies to module='slotvlm' only (the package samples)")
        if self.backend not in (None, "auto", "torch", "triton"):
            raise ValueError(f"backend must be auto, torch or triton, got {self.backend!r}")
        if self.module == "slot-attention" and self.backend not in (None, "auto", "torch"):
            raise ValueError(f"backend={self.backend!r} applies to module='slotvlm' only (the package is plain PyTorch)")
        for name in ("steps", "batch_size", "slot_dim", "mlp_hidden", "iters", "enc_channels", "enc_layers",
                     "enc_kernel", "enc_stride", "dec_channels", "dec_layers", "dec_kernel", "dec_stride",
                     "test_scenes", "eval_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("enc_kernel", "dec_kernel"):
            if getattr(self, name) % 2 == 0:
                raise ValueError(f"{name} must be odd (same-size convolutions), got {getattr(self, name)}")
        if self.num_slots is not None and (not isinstance(self.num_slots, int) or self.num_slots < 2):
            raise ValueError(f"num_slots must be an int >= 2, got {self.num_slots!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {self.warmup!r}")
        if self.decay_half_life is not None and self.decay_half_life < 1:
            raise ValueError(f"decay_half_life must be >= 1, got {self.decay_half_life!r}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds!r}")
        if self.figure_scenes < 0:
            raise ValueError(f"figure_scenes must be >= 0, got {self.figure_scenes!r}")
        return self

    @classmethod
    def from_preset(cls, preset: str, family: str = "tetrominoes", **overrides) -> "DiscoverConfig":
        """The settings of ``PRESETS[preset]`` for ``family``, then ``overrides`` (fields of this class;
        ``None`` values are ignored, so CLI arguments left unset keep the preset's value)."""
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        if family not in PRESETS[preset]:
            raise ValueError(f"family must be one of {sorted(PRESETS[preset])}, got {family!r}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown DiscoverConfig fields {unknown}")
        values = {**PRESETS[preset][family], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(family=family, **values)

    @property
    def slots(self) -> int:
        return self.num_slots or scenes.max_objects(self.family) + 1


# The recipes of `slotvlm discover --preset` (docs/object_discovery.md, "Recipes"; ablation of issue 24).
# cpu: found by one-change-at-a-time ablation on the 2-core CPU (seed 0, equal steps): one encoder
#   conv of kernel = stride = the scene's block size (each slot input sees one cell; 3 layers of 5x5
#   context: FG-ARI 0.40 vs 0.64), a per-cell MLP decoder of width 64 on the (size/stride)^2 grid
#   before the transposed conv (0.74-0.79 vs 0.62-0.64 for 5x5 convs of width 32), lr 1e-3 with
#   100 warm-up steps; then (third session) a learned per-slot init table and lr halving every 10,000
#   steps: FG-ARI 0.78 -> 0.92 over 3 seeds, one slot for the background. ~30 min on one thread.
# gpu: the Slot Attention paper's settings (full resolution, 64 channels, batch 64, lr 4e-4 with
#   10k warm-up steps and a 100k-step half-life, 500k steps); not run here (no GPU lent).
_CPU = dict(steps=50_000, lr=1e-3, warmup=100, decay_half_life=10_000, slot_init="learned", enc_layers=1,
            enc_kernel=5, dec_channels=64, dec_layers=3, dec_kernel=1, eval_every=1000)
_GPU = dict(steps=500_000, batch_size=64, lr=4e-4, warmup=10_000, decay_half_life=100_000, enc_channels=64,
            enc_layers=4, enc_kernel=5, enc_stride=1, slot_dim=64, mlp_hidden=128, dec_channels=64, dec_layers=4,
            dec_kernel=5, dec_stride=1, eval_every=5000, device="cuda")
PRESETS = {
    "cpu": {"tetrominoes": {**_CPU, "enc_stride": 5, "dec_stride": 5},  # 35x35 -> 7x7 cells of 5x5 pixels
            "multi_dsprites": {**_CPU, "enc_stride": 4, "dec_stride": 4}},  # 64x64 -> 16x16
    "gpu": {"tetrominoes": dict(_GPU), "multi_dsprites": dict(_GPU)},
}


# ------------------------------------------------------------------------------------------ model
def position_grid(h: int, w: int) -> torch.Tensor:
    """``[h, w, 4]``: (y, x, 1-y, 1-x) ramps in [0, 1] (the paper's soft position embedding input)."""
    y = torch.linspace(0, 1, h)[:, None].expand(h, w)
    x = torch.linspace(0, 1, w)[None, :].expand(h, w)
    return torch.stack([y, x, 1 - y, 1 - x], dim=-1)


class SoftPositionEmbed(nn.Module):
    """Adds ``Linear(position_grid)`` to a ``[B, H, W, C]`` feature map."""

    def __init__(self, channels: int, size: tuple[int, int]):
        super().__init__()
        self.proj = nn.Linear(4, channels)
        self.register_buffer("grid", position_grid(*size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(self.grid)


def _pad(kernel: int, stride: int) -> int:
    """Same-size padding at stride 1; at stride s, the least padding that keeps ceil(size/s) outputs,
    so with kernel == stride the windows are exactly the s×s cells (padding 0)."""
    return kernel // 2 if stride == 1 else max(0, (kernel - stride + 1) // 2)


def _convs(c_in: int, channels: int, layers: int, kernel: int, c_out: int | None = None, stride: int = 1) -> nn.Sequential:
    mods = []
    for i in range(layers):
        last = i == layers - 1
        out = c_out if (last and c_out is not None) else channels
        s = stride if i == 0 else 1
        mods.append(nn.Conv2d(c_in if i == 0 else channels, out, kernel, padding=_pad(kernel, s), stride=s))
        if not (last and c_out is not None):
            mods.append(nn.ReLU(inplace=True))
    return nn.Sequential(*mods)


class SlotAutoencoder(nn.Module):
    """The slot attention autoencoder for ``size × size`` RGB images.

    ``forward(images [B, 3, H, W] in [-1, 1])`` returns a dict: ``recon [B, 3, H, W]``,
    ``masks [B, K, H, W]`` (softmax over slots), ``slot_recons [B, K, 3, H, W]``, ``slots [B, K, D]``.
    """

    def __init__(self, cfg: DiscoverConfig, size: int):
        super().__init__()
        d = cfg.slot_dim
        self.size = size
        self.num_slots = cfg.slots
        self.encoder = _convs(3, cfg.enc_channels, cfg.enc_layers, cfg.enc_kernel, stride=cfg.enc_stride)
        grid = (size + 2 * _pad(cfg.enc_kernel, cfg.enc_stride) - cfg.enc_kernel) // cfg.enc_stride + 1
        self.enc_pos = SoftPositionEmbed(cfg.enc_channels, (grid, grid))
        self.enc_mlp = nn.Sequential(nn.LayerNorm(cfg.enc_channels), nn.Linear(cfg.enc_channels, cfg.mlp_hidden),
                                     nn.ReLU(inplace=True), nn.Linear(cfg.mlp_hidden, d))
        if cfg.module == "slot-attention":
            from slot_attention import SlotAttention as PackageSlotAttention  # noqa: PLC0415

            self.slot_attention = PackageSlotAttention(cfg.slots, d, iters=cfg.iters, hidden_dim=cfg.mlp_hidden)
        else:
            from .nn.slot_attention import SlotAttention  # noqa: PLC0415

            self.slot_attention = SlotAttention(cfg.slots, d, iters=cfg.iters, hidden_dim=cfg.mlp_hidden,
                                                backend=cfg.backend, init=cfg.slot_init)
        self.dec_grid = -(-size // cfg.dec_stride)  # the broadcast grid side
        self.dec_pos = SoftPositionEmbed(d, (self.dec_grid, self.dec_grid))
        self.upsample = None
        if cfg.dec_stride > 1:  # Locatello et al.'s CLEVR decoder layout: small grid, then transposed conv
            self.decoder = _convs(d, cfg.dec_channels, max(1, cfg.dec_layers - 1), cfg.dec_kernel)
            self.upsample = nn.ConvTranspose2d(cfg.dec_channels, 4, cfg.dec_stride, stride=cfg.dec_stride)
            self.channels_last = False
        elif cfg.dec_kernel == 1:  # 1×1 convolutions = a per-pixel MLP; run as Linear layers (channels last)
            mods = []
            for i in range(cfg.dec_layers):
                last = i == cfg.dec_layers - 1
                mods += [nn.Linear(d if i == 0 else cfg.dec_channels, 4 if last else cfg.dec_channels)]
                mods += [] if last else [nn.ReLU(inplace=True)]
            self.decoder = nn.Sequential(*mods)
            self.channels_last = True
        else:
            self.decoder = _convs(d, cfg.dec_channels, cfg.dec_layers, cfg.dec_kernel, c_out=4)
            self.channels_last = False

    def forward(self, images: torch.Tensor) -> dict:
        b = images.shape[0]
        x = self.encoder(images).permute(0, 2, 3, 1)  # [B, H, W, C]
        x = self.enc_mlp(self.enc_pos(x).flatten(1, 2))  # [B, N, D]
        slots = self.slot_attention(x)  # [B, K, D]
        k, d = slots.shape[1], slots.shape[2]
        g = self.dec_grid
        z = self.dec_pos(slots.reshape(b * k, 1, 1, d).expand(-1, g, g, -1))  # spatial broadcast
        if self.upsample is not None:
            out = self.upsample(self.decoder(z.permute(0, 3, 1, 2)))[..., : self.size, : self.size]
            out = out.reshape(b, k, 4, self.size, self.size)
        elif self.channels_last:
            out = self.decoder(z).view(b, k, self.size, self.size, 4).permute(0, 1, 4, 2, 3)
        else:
            out = self.decoder(z.permute(0, 3, 1, 2)).view(b, k, 4, self.size, self.size)
        rgb, alpha = out[:, :, :3], out[:, :, 3:]
        masks = alpha.softmax(dim=1)
        recon = (rgb * masks).sum(1)
        return {"recon": recon, "masks": masks[:, :, 0], "slot_recons": rgb, "slots": slots}


def to_input(images: np.ndarray, device) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` → float ``[B, 3, H, W]`` in [-1, 1]."""
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1)


# ------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(model: SlotAutoencoder, images: np.ndarray, masks: np.ndarray, seed: int, batch: int = 64) -> dict:
    """Metrics of the decoder's alpha masks on ``images`` (uint8 ``[n, H, W, 3]``) against ``masks``
    (int ``[n, H, W]``): nan-means of FG-ARI, ARI, mBO, mIoU and the MSE. The slot-init noise is
    drawn from ``seed`` (the global RNG is left as it was).

    ``fg_ari`` / ``ari`` score the **hard** segmentation, each pixel given to its argmax slot, as the
    Slot Attention paper, the multi-object-datasets reference code, OCL and scikit-learn's
    ``adjusted_rand_score`` do; ``fg_ari_soft`` / ``ari_soft`` are the expected-contingency scores of
    the soft alpha masks themselves (lower for masks that are not confident; not comparable with
    published numbers). mBO and mIoU are always on the argmax labels."""
    from . import metrics  # noqa: PLC0415

    was = model.training
    model.eval()
    device = next(model.parameters()).device
    parts = {"fg_ari": [], "ari": [], "fg_ari_soft": [], "ari_soft": [], "mbo": [], "miou": []}
    mse = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(0, len(images), batch):
            x = to_input(images[i:i + batch], device)
            out = model(x)
            soft = out["masks"].float().cpu()  # [b, K, H, W]
            hard = soft.argmax(1)  # [b, H, W] slot labels
            true = torch.from_numpy(masks[i:i + batch])
            parts["fg_ari"].append(metrics.fg_ari(true, hard))
            parts["ari"].append(metrics.adjusted_rand_index(true, hard))
            parts["fg_ari_soft"].append(metrics.fg_ari(true, soft))
            parts["ari_soft"].append(metrics.adjusted_rand_index(true, soft))
            parts["mbo"].append(metrics.mean_best_overlap(true, hard))
            parts["miou"].append(metrics.matched_miou(true, hard))
            mse.append(float(((out["recon"] - x) ** 2).mean()) * len(x))
    model.train(was)
    res = {k: float(np.nanmean(torch.cat(v).numpy())) for k, v in parts.items()}
    res["test_mse"] = sum(mse) / len(images)
    return res


@torch.no_grad()
def save_figure(model: SlotAutoencoder, images: np.ndarray, path: str, title: str, seed: int) -> str:
    """A PNG: per scene, the input, the reconstruction, each slot's mask and its masked reconstruction."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    device = next(model.parameters()).device
    was = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = model(to_input(images, device))
    model.train(was)
    n, k = len(images), out["masks"].shape[1]
    recon = ((out["recon"].clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
    masks = out["masks"].cpu().numpy()
    slot_rgb = ((out["slot_recons"].clamp(-1, 1) + 1) / 2).permute(0, 1, 3, 4, 2).cpu().numpy()
    cols = 2 + 2 * k
    fig, axes = plt.subplots(n, cols, figsize=(1.3 * cols, 1.4 * n + 0.5), squeeze=False)
    for i in range(n):
        panels = [(images[i], "input"), (recon[i], "reconstruction")]
        panels += [(masks[i, j], f"slot {j} mask") for j in range(k)]
        panels += [(slot_rgb[i, j] * masks[i, j][..., None] + (1 - masks[i, j][..., None]), f"slot {j} recon")
                   for j in range(k)]
        for ax, (img, label) in zip(axes[i], panels):
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(label, fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------ checkpoints
def _save_checkpoint(out: str, step: int, model: nn.Module, opt: torch.optim.Optimizer, meta: dict) -> str:
    from safetensors.torch import save_file  # noqa: PLC0415

    final = os.path.join(out, "checkpoints", f"step_{step:06d}")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(tmp, "model.safetensors"))
    tensors, scalars = {}, {}
    for i, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value) and value.ndim > 0:
                tensors[f"{i}.{name}"] = value.contiguous()
            else:
                scalars[f"{i}.{name}"] = float(value)
    save_file(tensors, os.path.join(tmp, "optim.safetensors"))
    with open(os.path.join(tmp, "state.json"), "w", encoding="utf-8") as f:
        json.dump({"step": step, "optimizer_scalars": scalars, **meta}, f)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in _checkpoints(out)[:-2]:  # keep the last two
        shutil.rmtree(old, ignore_errors=True)
    return final


def _checkpoints(out: str) -> list[str]:
    root = os.path.join(out, "checkpoints")
    if not os.path.isdir(root):
        return []
    return sorted(os.path.join(root, d) for d in os.listdir(root) if d.startswith("step_") and not d.endswith(".tmp"))


def _load_checkpoint(path: str, model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    from safetensors.torch import load_file  # noqa: PLC0415

    model.load_state_dict(load_file(os.path.join(path, "model.safetensors")))
    with open(os.path.join(path, "state.json"), encoding="utf-8") as f:
        state = json.load(f)
    tensors = load_file(os.path.join(path, "optim.safetensors"))
    sd = opt.state_dict()
    per_param: dict[int, dict] = {}
    for key, value in tensors.items():
        i, name = key.split(".", 1)
        per_param.setdefault(int(i), {})[name] = value
    for key, value in state["optimizer_scalars"].items():
        i, name = key.split(".", 1)
        per_param.setdefault(int(i), {})[name] = torch.tensor(value)
    sd["state"] = per_param
    opt.load_state_dict(sd)
    return state


def _lr_factor(cfg: DiscoverConfig, step: int) -> float:
    warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else 1.0
    if cfg.decay_half_life is None:
        return warm
    return warm * 0.5 ** (max(0, step - cfg.warmup) / cfg.decay_half_life)


def read_log(out: str) -> list[dict]:
    """The rows of ``OUT/log.jsonl``."""
    path = os.path.join(out, "log.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------------------------------------ train
def train(cfg: DiscoverConfig) -> dict:
    """Train (or resume) one object-discovery run; returns the final evaluation (also in result.json)."""
    from tqdm import tqdm  # noqa: PLC0415

    cfg.validate()
    if cfg.figure_scenes:
        try:
            import matplotlib  # noqa: F401, PLC0415
        except ImportError as exc:
            raise ValueError("figure_scenes > 0 needs matplotlib: pip install 'slotvlm[viz]' "
                             "(or pass --figure-scenes 0)") from exc
    os.makedirs(cfg.out, exist_ok=True)
    cfg_path = os.path.join(cfg.out, "config.json")
    ckpts = _checkpoints(cfg.out)
    if cfg.resume and ckpts:
        with open(cfg_path, encoding="utf-8") as f:
            saved = json.load(f)
        for name in ("family", "module", "slot_dim", "num_slots", "enc_channels", "enc_layers", "enc_kernel",
                     "enc_stride", "dec_channels", "dec_layers", "dec_kernel", "dec_stride", "mlp_hidden", "iters", "seed", "batch_size"):
            if saved.get(name) != getattr(cfg, name):
                raise ValueError(f"--resume: {name}={getattr(cfg, name)!r} differs from the run in {cfg.out} "
                                 f"({saved.get(name)!r})")
    elif not cfg.resume and ckpts:
        raise ValueError(f"out={cfg.out!r} already holds checkpoints; pass resume=True (--resume) or another folder")
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(asdict(cfg), f, indent=1)

    device = torch.device(cfg.device)
    size = scenes.image_size(cfg.family)
    torch.manual_seed(cfg.seed)
    model = SlotAutoencoder(cfg, size).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start = 0
    elapsed = 0.0
    log_path = os.path.join(cfg.out, "log.jsonl")
    if cfg.resume and ckpts:
        state = _load_checkpoint(ckpts[-1], model, opt)
        start, elapsed = state["step"], state["elapsed"]
        rows = [r for r in read_log(cfg.out) if r["step"] <= start]  # drop lines written after the checkpoint
        with open(log_path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    elif os.path.exists(log_path):
        os.remove(log_path)
    test_images, test_masks = scenes.generate(cfg.family, cfg.test_scenes, seed=cfg.seed, split="test")
    save_every = cfg.save_every or cfg.eval_every
    title = f"{cfg.family} · module={cfg.module} · backend={cfg.backend or 'auto'} · seed {cfg.seed}"

    def log(row: dict) -> None:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def do_eval(step: int) -> dict:
        res = evaluate(model, test_images, test_masks, seed=cfg.seed)
        if cfg.figure_scenes:
            m = res
            save_figure(model, test_images[: cfg.figure_scenes], os.path.join(cfg.out, "figures", f"step_{step:06d}.png"),
                        f"{title} · step {step} · held-out FG-ARI {m['fg_ari']:.3f} · mBO {m['mbo']:.3f}", seed=cfg.seed)
        return res

    if start == 0:
        log({"step": 0, "seconds": 0.0, **do_eval(0)})
    bar = tqdm(total=cfg.steps, initial=start, desc=f"discover {cfg.family}", unit="step", disable=not cfg.progress)
    last_eval: dict = {}
    t0 = time.perf_counter() - elapsed
    loss_ema = None
    for step in range(start, cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(cfg, step)
        images, _ = scenes.generate(cfg.family, cfg.batch_size, seed=cfg.seed, split="train", start=step * cfg.batch_size)
        x = to_input(images, device)
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # the slot-init noise of this step
        out = model(x)
        loss = ((out["recon"] - x) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise RuntimeError(f"loss became {value} at step {step + 1}; lower --lr")
        loss_ema = value if loss_ema is None else 0.95 * loss_ema + 0.05 * value
        done = step + 1
        row = {"step": done, "loss": value, "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        out_of_time = cfg.max_seconds is not None and row["seconds"] >= cfg.max_seconds
        if done % cfg.eval_every == 0 or done == cfg.steps or out_of_time:
            last_eval = do_eval(done)
            row.update(last_eval)
        log(row)
        bar.set_postfix(loss=f"{loss_ema:.4f}", fg_ari=f"{last_eval['fg_ari']:.3f}" if last_eval else "-")
        bar.update(1)
        if done % save_every == 0 or done == cfg.steps or out_of_time:
            _save_checkpoint(cfg.out, done, model, opt, {"elapsed": time.perf_counter() - t0})
        if out_of_time:
            break
    bar.close()
    from safetensors.torch import save_file  # noqa: PLC0415

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(cfg.out, "model.safetensors"))
    rows = read_log(cfg.out)
    final = next((r for r in reversed(rows) if "fg_ari" in r), {})
    result = {"steps": rows[-1]["step"] if rows else 0, "seconds": rows[-1]["seconds"] if rows else 0.0,
              **{k: final.get(k) for k in ("fg_ari", "ari", "fg_ari_soft", "ari_soft", "mbo", "miou", "test_mse")}}
    with open(os.path.join(cfg.out, "result.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    return result


def config_fields() -> list[str]:
    return [f.name for f in fields(DiscoverConfig)]


CSV_COLUMNS = ("timestamp,commit,machine,threads,torch,family,module,backend,seed,steps,batch_size,lr,wall_s,"
               "fg_ari,ari,fg_ari_soft,ari_soft,mbo,miou,label").split(",")


def machine_name() -> str:
    """``CPU <model> x<cores>`` or the CUDA device name."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return cpu_name()


def append_csv(path: str, cfg: DiscoverConfig, result: dict, label: str = "") -> dict:
    """Append one row (``CSV_COLUMNS``) describing a finished run to ``path``; returns the row."""
    import csv  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    from datetime import datetime, timezone  # noqa: PLC0415

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        commit = ""
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    row = {
        "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), "commit": commit,
        "machine": machine_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "family": cfg.family, "module": cfg.module, "backend": cfg.backend or "auto", "seed": cfg.seed,
        "steps": result["steps"], "batch_size": cfg.batch_size, "lr": cfg.lr, "wall_s": f"{result['seconds']:.0f}",
        "fg_ari": fmt(result.get("fg_ari")), "ari": fmt(result.get("ari")),
        "fg_ari_soft": fmt(result.get("fg_ari_soft")), "ari_soft": fmt(result.get("ari_soft")), "mbo": fmt(result.get("mbo")),
        "miou": fmt(result.get("miou")), "label": label,
    }
    new = not os.path.exists(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        if new:
            w.writeheader()
        w.writerow(row)
    return row
