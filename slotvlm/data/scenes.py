"""Procedural multi-object scenes with ground-truth instance masks, for object discovery.

Two families, in the spirit of DeepMind's Multi-Object Datasets (generated here, not downloaded):

- ``"tetrominoes"``: 35×35 RGB, 3 Tetris pieces on a black background. Each piece is one of the
  19 fixed tetromino orientations (I ×2, O, T ×4, S ×2, Z ×2, L ×4, J ×4) drawn on a 7×7 grid of
  5×5-pixel blocks, in one of 6 colours (colours may repeat, as in the original); pieces never
  overlap.
- ``"multi_dsprites"``: 64×64 RGB, 2–5 sprites (square, ellipse, heart) with random colours,
  positions, scales and orientations on a random-colour background; later sprites occlude earlier
  ones (painter's order).

Masks are integer label maps ``[n, H, W]``: 0 is the background, ``1..k`` the objects in drawing
order (for multi_dsprites the visible part; a fully hidden sprite has no pixels).

Everything is a pure function of ``(family, seed, split, index)``: scene ``i`` of a split is the
same however it is requested. Scenes are generated vectorised in chunks of :data:`CHUNK` (one numpy
generator per chunk, seeded with ``[family, seed, split, chunk]``), so the train and test splits are
independent random streams (held-out scenes, not a re-shuffle of the training ones)::

    from slotvlm.data.scenes import generate
    images, masks = generate("tetrominoes", 64, seed=0, split="test")   # uint8 [64,35,35,3], int64 [64,35,35]
"""
from __future__ import annotations

import numpy as np

FAMILIES = ("tetrominoes", "multi_dsprites")
SPLITS = ("train", "test")
CHUNK = 64

# ---------------------------------------------------------------------------- tetrominoes
TETRO_GRID = 7  # blocks per side
TETRO_BLOCK = 5  # pixels per block → 35×35
TETRO_PIECES = 3
# The 19 fixed tetrominoes as (row, col) block offsets.
TETROMINOES = np.array([
    [(0, 0), (0, 1), (0, 2), (0, 3)], [(0, 0), (1, 0), (2, 0), (3, 0)],  # I
    [(0, 0), (0, 1), (1, 0), (1, 1)],  # O
    [(0, 0), (0, 1), (0, 2), (1, 1)], [(0, 1), (1, 0), (1, 1), (2, 1)],  # T
    [(0, 1), (1, 0), (1, 1), (1, 2)], [(0, 0), (1, 0), (1, 1), (2, 0)],
    [(0, 1), (0, 2), (1, 0), (1, 1)], [(0, 0), (1, 0), (1, 1), (2, 1)],  # S
    [(0, 0), (0, 1), (1, 1), (1, 2)], [(0, 1), (1, 0), (1, 1), (2, 0)],  # Z
    [(0, 0), (1, 0), (2, 0), (2, 1)], [(0, 0), (0, 1), (0, 2), (1, 0)],  # L
    [(0, 0), (0, 1), (1, 1), (2, 1)], [(0, 2), (1, 0), (1, 1), (1, 2)],
    [(0, 1), (1, 1), (2, 0), (2, 1)], [(0, 0), (1, 0), (1, 1), (1, 2)],  # J
    [(0, 0), (0, 1), (1, 0), (2, 0)], [(0, 0), (0, 1), (0, 2), (1, 2)],
], dtype=np.int64)
TETRO_COLOURS = np.array(
    [(230, 40, 40), (40, 200, 60), (50, 90, 235), (235, 220, 40), (40, 210, 220), (210, 60, 210)], dtype=np.uint8
)

# ---------------------------------------------------------------------------- multi-dSprites
DSPRITES_SIZE = 64
DSPRITES_SHAPES = ("square", "ellipse", "heart")
DSPRITES_MIN, DSPRITES_MAX = 2, 5


def _check(family: str, n: int, split: str, start: int) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
        raise ValueError(f"start must be an int >= 0, got {start!r}")


def image_size(family: str) -> int:
    """Side of the square images of ``family`` (35 or 64)."""
    _check(family, 0, "train", 0)
    return TETRO_GRID * TETRO_BLOCK if family == "tetrominoes" else DSPRITES_SIZE


def max_objects(family: str) -> int:
    """The most objects a scene of ``family`` holds (3 or 5), background not counted."""
    _check(family, 0, "train", 0)
    return TETRO_PIECES if family == "tetrominoes" else DSPRITES_MAX


def _tetrominoes_chunk(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    g = TETRO_GRID
    labels = np.zeros((n, g, g), dtype=np.int64)
    colours = rng.integers(0, len(TETRO_COLOURS), size=(n, TETRO_PIECES))
    extent = TETROMINOES.max(axis=1) + 1  # [19, 2] (rows, cols) of each piece's bounding box
    for piece in range(1, TETRO_PIECES + 1):
        pending = np.arange(n)
        while pending.size:  # rejection sampling, vectorised over the scenes still pending
            m = pending.size
            shape = rng.integers(0, len(TETROMINOES), size=m)
            r0 = (rng.uniform(size=m) * (g - extent[shape, 0] + 1)).astype(np.int64)
            c0 = (rng.uniform(size=m) * (g - extent[shape, 1] + 1)).astype(np.int64)
            rows = r0[:, None] + TETROMINOES[shape, :, 0]  # [m, 4]
            cols = c0[:, None] + TETROMINOES[shape, :, 1]
            free = (labels[pending[:, None], rows, cols] == 0).all(axis=1)
            ok = pending[free]
            labels[ok[:, None], rows[free], cols[free]] = piece
            pending = pending[~free]
    masks = labels.repeat(TETRO_BLOCK, axis=1).repeat(TETRO_BLOCK, axis=2)
    palette = np.concatenate([np.zeros((n, 1, 3), np.uint8), TETRO_COLOURS[colours]], axis=1)  # [n, 4, 3]
    images = palette[np.arange(n)[:, None, None], masks]
    amodal = masks[:, None] == np.arange(1, TETRO_PIECES + 1)[None, :, None, None]
    return images, masks, amodal


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # The implicit heart curve (x² + y² − 1)³ − x² y³ ≤ 0, point up = −v, scaled to fit |u|,|v| ≲ 1.
    x, y = u * 1.2, -v * 1.2 + 0.15
    return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0


def _dsprites_chunk(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    s, k = DSPRITES_SIZE, DSPRITES_MAX
    count = rng.integers(DSPRITES_MIN, DSPRITES_MAX + 1, size=n)
    active = np.arange(k)[None, :] < count[:, None]  # [n, k]
    shape = rng.integers(0, len(DSPRITES_SHAPES), size=(n, k))
    scale = rng.uniform(0.09, 0.2, size=(n, k)) * s  # half-size in pixels
    cx = rng.uniform(0.15, 0.85, size=(n, k)) * s
    cy = rng.uniform(0.15, 0.85, size=(n, k)) * s
    angle = rng.uniform(0, 2 * np.pi, size=(n, k))
    colour = rng.integers(0, 256, size=(n, k, 3))
    background = rng.integers(0, 256, size=(n, 3))
    # Keep every sprite visibly different from the background (distance in RGB ≥ 80).
    far = np.linalg.norm(colour - background[:, None], axis=-1) >= 80
    colour = np.where(far[..., None], colour, (background[:, None] + 128) % 256)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    cx, cy, scale, angle = (a.astype(np.float32) for a in (cx, cy, scale, angle))
    dx = xx[None, None] - cx[..., None, None]  # [n, k, s, s]
    dy = yy[None, None] - cy[..., None, None]
    cos, sin = np.cos(angle)[..., None, None], np.sin(angle)[..., None, None]
    u = (cos * dx + sin * dy) / scale[..., None, None]
    v = (-sin * dx + cos * dy) / scale[..., None, None]
    sq = np.maximum(np.abs(u), np.abs(v)) <= 1
    el = u * u + (v / 0.55) ** 2 <= 1
    he = _heart(u, v)
    cover = np.where(shape[..., None, None] == 0, sq, np.where(shape[..., None, None] == 1, el, he))
    cover &= active[..., None, None]
    # Painter's order: the last sprite covering a pixel is the one seen there.
    idx = np.arange(1, k + 1)[None, :, None, None]
    masks = (cover * idx).max(axis=1).astype(np.int64)  # [n, s, s]
    palette = np.concatenate([background[:, None], colour], axis=1).astype(np.uint8)  # [n, k+1, 3]
    images = palette[np.arange(n)[:, None, None], masks]
    return images, masks, cover


_FAMILY_ID = {"tetrominoes": 1, "multi_dsprites": 2}


def _chunk(family: str, seed: int, split: str, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng([_FAMILY_ID[family], int(seed), SPLITS.index(split), int(c)])
    fn = _tetrominoes_chunk if family == "tetrominoes" else _dsprites_chunk
    return fn(rng, CHUNK)


def generate(family: str, n: int, seed: int = 0, split: str = "train", start: int = 0, *,
             amodal: bool = False) -> tuple[np.ndarray, ...]:
    """Scenes ``start .. start+n-1`` of ``split``.

    Returns:
        images: ``uint8 [n, H, W, 3]``; masks: ``int64 [n, H, W]`` (0 = background, 1..k objects,
        the visible parts); with ``amodal=True`` also ``bool [n, max_objects, H, W]``: each object's
        whole silhouette before occlusion (row ``j`` is label ``j + 1``; all False if absent).
    """
    _check(family, n, split, start)
    size = image_size(family)
    if n == 0:
        empty = (np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), np.int64),
                 np.zeros((0, max_objects(family), size, size), bool))
        return empty if amodal else empty[:2]
    first, last = start // CHUNK, (start + n - 1) // CHUNK
    parts = [_chunk(family, seed, split, c) for c in range(first, last + 1)]
    off = start - first * CHUNK
    out = tuple(np.concatenate([p[i] for p in parts])[off:off + n] for i in range(3 if amodal else 2))
    return out
