"""Pictures of what the slots attend to (the paper's Figures 3 and 4), drawn with matplotlib.

:func:`figure_for_video` returns one labelled figure with two parts:

- **object slots** (slow branch): one row per sampled frame (``t_d`` = 8), labelled with its frame
  number and time in seconds; column 1 the frame (the centre crop CLIP sees), column 2 the frame
  with every patch coloured by its winning slot (argmax over slots), then one column per slot: the
  frame under that slot's attention mask (softmax over slots, 0..1). A legend gives the slot colours.
- **event slots** (fast branch): a strip of all T frames along the time axis, then for each of the
  (G/s)² pooled positions an ``N_f × T`` map of the event slots' attention over time (x: seconds,
  y: slot), with one colour bar.

A branch the model does not have (``use_slow=False`` / ``use_fast=False``) is named in the figure
and on stderr. ``matplotlib`` is an optional dependency (``pip install slotvlm[viz]``).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import numpy as np

PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195),
], dtype=np.float32)


def center_crop(frame: np.ndarray) -> np.ndarray:
    """The square centre crop of ``[H, W, 3]`` (what CLIP pre-processing keeps)."""
    h, w = frame.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return frame[top : top + s, left : left + s]


def slot_colors(n: int) -> np.ndarray:
    """``[n, 3]`` RGB colours in 0..1 for slots 0..n-1 (the same colour in every panel)."""
    return PALETTE[np.arange(n) % len(PALETTE)] / 255.0


@dataclass
class SlotMaps:
    """What :func:`draw_slots` draws, from :func:`slot_maps`.

    frames ``uint8 [T, H, W, 3]``, times ``[T]`` seconds; slow ``[t_d, N_s, G, G]`` object-slot
    attention (None without the object branch) on frames ``slow_indices [t_d]``; fast
    ``[P, N_f, T]`` event-slot attention per pooled position (None without the event branch);
    notes: sentences about absent branches."""

    frames: np.ndarray
    times: np.ndarray
    slow: np.ndarray | None
    slow_indices: np.ndarray | None
    fast: np.ndarray | None
    title: str = ""
    notes: list = field(default_factory=list)


def slot_maps(model, video, max_frames: int | None = None) -> SlotMaps:
    """Decode ``video`` (a path) at the model's fps, run CLIP and the connector, and collect the
    attention maps of a :class:`SlotVLM` with a slot (or Q-Former) connector."""
    import torch  # noqa: PLC0415

    from ..video import load_video, preprocess  # noqa: PLC0415
    from .slowfast import SlowFastSlots  # noqa: PLC0415

    if not isinstance(model.connector, SlowFastSlots):
        raise ValueError(f"visualize needs a slot connector, this model's connector is {model.config.connector!r}")
    frames, times = load_video(video, fps=model.config.fps, max_frames=max_frames or model.config.max_frames)
    pixels = preprocess(frames, size=model.config.image_size)
    with torch.no_grad():
        feats = model.vision_features(pixels)
        _, info = model.encode_features([feats], return_attn=True)

    def first(x):
        return None if x is None else x[0].float().cpu().numpy()

    cfg, g = model.config, model.config.grid_size
    slow = first(info.get("slow"))
    if slow is not None:
        slow = slow.reshape(slow.shape[0], slow.shape[1], g, g)
    notes = []
    if not cfg.use_slow:
        notes.append("object branch absent: this model has use_slow=False (event slots only), "
                     "so there are no object-slot masks to draw")
    if not cfg.use_fast:
        notes.append("event branch absent: this model has use_fast=False (object slots only, e.g. trained "
                     "on the slow branch), so there are no event-slot maps to draw")
    si = info.get("slow_indices")
    title = (f"{os.path.basename(str(video))}: {len(times)} frames at {cfg.fps:g} fps — Slot-VLM "
             f"{cfg.num_tokens} video tokens")
    return SlotMaps(frames=np.asarray(frames), times=np.asarray(times, dtype=np.float64), slow=slow,
                    slow_indices=None if si is None else first(si).astype(int), fast=first(info.get("fast")),
                    title=title, notes=notes)


def _note_axis(fig, text: str):
    ax = fig.add_subplot(1, 1, 1)
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, wrap=True,
            bbox=dict(boxstyle="round", facecolor="#fff3cd", edgecolor="#c9a227"))
    return ax


def _draw_object(fig, m: SlotMaps, crops: np.ndarray) -> None:
    from matplotlib.colors import ListedColormap  # noqa: PLC0415
    from matplotlib.patches import Patch  # noqa: PLC0415

    t_d, n_s = m.slow.shape[:2]
    colors = slot_colors(n_s)
    cmap = ListedColormap(colors)
    axes = fig.subplots(t_d, n_s + 2, squeeze=False, gridspec_kw=dict(wspace=0.04, hspace=0.08))
    box = (0, 1, 0, 1)
    for j in range(t_d):
        idx = int(m.slow_indices[j])
        frame = crops[idx]
        a = m.slow[j]
        row = axes[j]
        row[0].imshow(frame, extent=box)
        row[0].set_ylabel(f"frame {idx}\nt = {m.times[idx]:.1f} s", rotation=0, ha="right", va="center", fontsize=8)
        row[1].imshow(frame, extent=box)
        row[1].imshow(a.argmax(0), cmap=cmap, vmin=-0.5, vmax=n_s - 0.5, alpha=0.55, interpolation="nearest",
                      extent=box)
        for k in range(n_s):
            ax = row[2 + k]
            ax.imshow(frame.mean(-1), cmap="gray", vmin=0, vmax=255, extent=box)
            ax.imshow(a[k], cmap="magma", vmin=0.0, vmax=1.0, alpha=0.7, interpolation="bilinear", extent=box)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_title("frame", fontsize=9)
    axes[0][1].set_title("winning slot", fontsize=9)
    for k in range(n_s):
        axes[0][2 + k].set_title(f"slot {k}", fontsize=9, color=colors[k], fontweight="bold")
    handles = [Patch(facecolor=colors[k], label=f"slot {k}") for k in range(n_s)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(n_s, 8), fontsize=8, frameon=False,
               title="object slot colours (winning slot per patch); slot columns: attention 0–1 (magma)",
               title_fontsize=8)
    fig.suptitle(f"Object slots: {n_s} slots on each of {t_d} sampled frames (rows; time in seconds)",
                 fontsize=10, fontweight="bold")


def _draw_event(fig, m: SlotMaps, crops: np.ndarray) -> None:
    p, n_f, t = m.fast.shape
    side = int(round(p ** 0.5))
    cols = side if side * side == p else int(np.ceil(np.sqrt(p)))
    rows = int(np.ceil(p / cols))
    dt = float(np.median(np.diff(m.times))) if t > 1 else 1.0
    x0, x1 = float(m.times[0]) - dt / 2, float(m.times[-1]) + dt / 2
    gs = fig.add_gridspec(rows + 1, cols, height_ratios=[0.55] + [1.0] * rows)
    strip_ax = fig.add_subplot(gs[0, :])
    thumbs = np.concatenate([np.asarray(_thumb(c, 48)) for c in crops], 1)
    strip_ax.imshow(thumbs, extent=(x0, x1, 0, 1), aspect="auto")
    strip_ax.set_yticks([])
    strip_ax.set_title(f"all {t} frames along time (s)", fontsize=9)
    strip_ax.tick_params(labelsize=7)
    im = None
    for pos in range(p):
        ax = fig.add_subplot(gs[1 + pos // cols, pos % cols])
        im = ax.imshow(m.fast[pos], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest",
                       extent=(x0, x1, n_f - 0.5, -0.5))
        ax.set_title(f"position ({pos // side}, {pos % side})" if side * side == p else f"position {pos}", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_yticks(range(n_f))
        if pos % cols == 0:
            ax.set_ylabel("event slot", fontsize=7)
        else:
            ax.set_yticklabels([])
        if pos // cols == rows - 1:
            ax.set_xlabel("time (s)", fontsize=7)
    fig.colorbar(im, ax=fig.axes[1:], shrink=0.6, label="attention (softmax over slots)")
    fig.suptitle(f"Event slots: {n_f} slots per pooled position ({p} positions), attention over {t} frames",
                 fontsize=10, fontweight="bold")


def _thumb(frame: np.ndarray, size: int):
    from PIL import Image  # noqa: PLC0415

    return Image.fromarray(np.ascontiguousarray(frame)).resize((size, size), Image.BILINEAR)


def draw_slots(m: SlotMaps, cell: int = 96):
    """The figure for :class:`SlotMaps` (see the module docstring); ``cell``: pixels per frame tile
    at the figure's 100 dpi. Returns a ``matplotlib.figure.Figure``."""
    try:
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("visualize needs matplotlib: pip install 'slotvlm[viz]' (or pip install matplotlib)") from exc

    crops = np.stack([center_crop(f) for f in m.frames])
    tile = cell / 100.0
    if m.slow is not None:
        t_d, n_s = m.slow.shape[:2]
        obj_w, obj_h = (n_s + 2) * tile + 1.2, t_d * tile + 1.3
    else:
        obj_w, obj_h = 8, 1.2
    if m.fast is not None:
        p = m.fast.shape[0]
        rows = int(np.ceil(p / max(1, int(round(p ** 0.5)))))
        ev_h = 1.6 + rows * max(1.3, 1.6 * tile)
    else:
        ev_h = 1.2
    width = max(obj_w, 8.0)
    fig = Figure(figsize=(width, obj_h + ev_h + 0.6), dpi=100, layout="constrained")
    head, obj, ev = fig.subfigures(3, 1, height_ratios=[0.45, obj_h, ev_h])
    head.text(0.5, 0.5, m.title or "Slot-VLM slots", ha="center", va="center", fontsize=12, fontweight="bold")
    if m.slow is not None:
        _draw_object(obj, m, crops)
    else:
        _note_axis(obj, next(n for n in m.notes if n.startswith("object")))
    if m.fast is not None:
        _draw_event(ev, m, crops)
    else:
        _note_axis(ev, next(n for n in m.notes if n.startswith("event")))
    return fig


def figure_for_video(model, video, max_frames: int | None = None, cell: int = 96):
    """Decode ``video``, run ``model`` and return the labelled ``matplotlib`` Figure of its slots.
    Absent branches are said in the figure and printed on stderr."""
    m = slot_maps(model, video, max_frames=max_frames)
    for note in m.notes:
        print(f"slotvlm visualize: {note}", file=sys.stderr)
    return draw_slots(m, cell=cell)


def visualize_video(model, video: str, out: str, cell: int = 96, max_frames: int | None = None):
    """Draw :func:`figure_for_video` and save it to ``out`` (PNG). Returns the written image as a
    ``PIL.Image`` (RGB)."""
    from PIL import Image  # noqa: PLC0415

    fig = figure_for_video(model, video, max_frames=max_frames, cell=cell)
    fig.savefig(out, format="png", dpi=100, facecolor="white")
    with Image.open(out) as img:
        return img.convert("RGB")
