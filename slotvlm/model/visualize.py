"""Pictures of what the slots attend to (the paper's Figures 3 and 4), drawn with PIL.

Layout of :func:`render_slots` (width ``t_d · cell``):

- object section (when the object branch is on): one column per sampled frame; row 0 the frame
  (the centre crop CLIP sees), row 1 each patch coloured by its winning slot, rows 2 … N_s+1 the
  frame lit by one slot's attention mask;
- event section (when the event branch is on): a strip of ``strip_h`` pixels with thumbnails of all
  T frames along time, then for each of the (G/s)² pooled positions a white ``GAP``-pixel band
  labelled with the position, and a block of N_f rows (one per event slot, ``ROW_H`` pixels each,
  the slot's colour × its attention over time, time running left to right).
"""
from __future__ import annotations

import numpy as np

PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195),
], dtype=np.float32)

ROW_H, GAP, STRIP_H = 6, 12, 32


def center_crop(frame: np.ndarray) -> np.ndarray:
    """The square centre crop of ``[H, W, 3]`` (what CLIP pre-processing keeps)."""
    h, w = frame.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return frame[top : top + s, left : left + s]


def _resize(img: np.ndarray, w: int, h: int, nearest: bool = False) -> np.ndarray:
    from PIL import Image  # noqa: PLC0415

    mode = Image.NEAREST if nearest else Image.BILINEAR
    if img.dtype != np.uint8:
        # float maps: resize each channel in float mode
        chans = img[..., None] if img.ndim == 2 else img
        out = [np.asarray(Image.fromarray(chans[..., c].astype(np.float32), mode="F").resize((w, h), mode))
               for c in range(chans.shape[-1])]
        out = np.stack(out, -1)
        return out[..., 0] if img.ndim == 2 else out
    return np.asarray(Image.fromarray(img).resize((w, h), mode))


def _norm(m: np.ndarray) -> np.ndarray:
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def image_size(t_d: int, num_slots_slow: int, positions: int, num_slots_fast: int, cell: int,
               use_slow: bool = True, use_fast: bool = True) -> tuple[int, int]:
    """``(width, height)`` of the picture :func:`render_slots` draws."""
    h = (2 + num_slots_slow) * cell if use_slow else 0
    if use_fast:
        h += STRIP_H + positions * (num_slots_fast * ROW_H + GAP)
    return t_d * cell, h


def render_slots(frames: np.ndarray, slow_attn: np.ndarray | None, slow_indices: np.ndarray | None,
                 fast_attn: np.ndarray | None, grid: int, t_d: int, cell: int = 96):
    """Draw the slot masks; returns a ``PIL.Image`` (RGB).

    Args:
        frames: ``uint8 [T, H, W, 3]``, the video's sampled frames.
        slow_attn: ``[t_d, N_s, G·G]`` object-slot attention, or None (object branch off).
        slow_indices: ``[t_d]`` the frames the object branch used.
        fast_attn: ``[P, N_f, T]`` event-slot attention per pooled position, or None.
        grid: G, the patch grid side. t_d: object frames (sets the width). cell: tile size in px.
    """
    from PIL import Image  # noqa: PLC0415

    frames = np.stack([_resize(np.ascontiguousarray(center_crop(f)), cell, cell) for f in np.asarray(frames)])
    width = t_d * cell
    sections = []
    if slow_attn is not None:
        n_s = slow_attn.shape[1]
        block = np.zeros(((2 + n_s) * cell, width, 3), dtype=np.float32)
        for j in range(t_d):
            f = frames[int(slow_indices[j])].astype(np.float32)
            a = slow_attn[j].reshape(n_s, grid, grid)
            x0 = j * cell
            block[:cell, x0 : x0 + cell] = f
            winner = _resize(a.argmax(0).astype(np.uint8), cell, cell, nearest=True)
            block[cell : 2 * cell, x0 : x0 + cell] = 0.45 * f + 0.55 * PALETTE[winner % len(PALETTE)]
            for k in range(n_s):
                m = _resize(_norm(a[k]).astype(np.float32), cell, cell)[..., None]
                y0 = (2 + k) * cell
                block[y0 : y0 + cell, x0 : x0 + cell] = f * (0.15 + 0.85 * m)
        sections.append(block)
    if fast_attn is not None:
        p, n_f, t = fast_attn.shape
        strip = np.concatenate([_resize(f, STRIP_H, STRIP_H) for f in frames], 1)
        strip = _resize(strip, width, STRIP_H)
        rows = [strip.astype(np.float32)]
        for pos in range(p):
            a = _norm(fast_attn[pos]).astype(np.float32)  # [N_f, T]
            heat = a[:, :, None] * PALETTE[np.arange(n_f) % len(PALETTE)][:, None, :]  # [N_f, T, 3]
            heat = np.stack([_resize(heat[..., c], width, n_f * ROW_H, nearest=True) for c in range(3)], -1)
            rows += [np.full((GAP, width, 3), 255.0, dtype=np.float32), heat]
        sections.append(np.concatenate(rows, 0))
    img = Image.fromarray(np.concatenate(sections, 0).clip(0, 255).astype(np.uint8), mode="RGB")
    if fast_attn is not None:
        from PIL import ImageDraw  # noqa: PLC0415

        draw = ImageDraw.Draw(img)
        fg = int(round(fast_attn.shape[0] ** 0.5))
        y = img.height - fast_attn.shape[0] * (GAP + fast_attn.shape[1] * ROW_H)
        for pos in range(fast_attn.shape[0]):
            label = f"event slots, position ({pos // fg}, {pos % fg}), time ->"
            try:
                draw.text((2, y - 1), label, fill=(0, 0, 0), font_size=GAP - 2)
            except TypeError:  # Pillow < 10.1 has no font_size
                draw.text((2, y - 1), label, fill=(0, 0, 0))
            y += GAP + fast_attn.shape[1] * ROW_H
    return img


def visualize_video(model, video: str, out: str, cell: int = 96, max_frames: int | None = None):
    """Decode ``video``, run ``model`` (a :class:`SlotVLM` with a SlowFast connector) and save the
    picture to ``out`` (PNG). Returns the ``PIL.Image``."""
    import torch  # noqa: PLC0415

    from ..video import load_video, preprocess  # noqa: PLC0415
    from .slowfast import SlowFastSlots  # noqa: PLC0415

    if not isinstance(model.connector, SlowFastSlots):
        raise ValueError(f"visualize needs a slot connector, this model's connector is {model.config.connector!r}")
    frames, _ = load_video(video, fps=model.config.fps, max_frames=max_frames or model.config.max_frames)
    pixels = preprocess(frames, size=model.config.image_size)
    frames = np.asarray(frames)  # the video runtime returns a uint8 tensor
    with torch.no_grad():
        feats = model.vision_features(pixels)
        _, info = model.encode_features([feats], return_attn=True)

    def np_(x):
        return None if x is None else x[0].float().cpu().numpy()

    img = render_slots(frames, np_(info.get("slow")), np_(info.get("slow_indices")), np_(info.get("fast")),
                       grid=model.config.grid_size, t_d=model.config.num_slow_frames, cell=cell)
    img.save(out)
    return img
