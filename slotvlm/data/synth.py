"""Procedurally generated video QA data: coloured shapes that appear, move and change colour.

Everything is drawn with numpy and written with PyAV, so the whole training pipeline can run
offline. Each video holds 1–3 objects with distinct shapes and distinct colours; objects appear one
after another, each moves in one direction (left/right/up/down), and one object may change colour
half-way through its life. Questions have short canonical answers ("red", "circle", "two", "left",
"blue square"), so exact match is a meaningful metric.

Output layout (the real data formats)::

    OUT/videos/v_synth00000.mp4 ...
    OUT/instructions.json     VideoInstruct-100K: [{"video_id": "v_synth00000", "q": ..., "a": ...}]
    OUT/qa/test_q.json        ActivityNet-QA:     [{"video_name": "synth00042", "question", "question_id"}]
    OUT/qa/test_a.json                            [{"answer", "type", "kind", "question_id"}]
    OUT/meta.json             the scene description of every video (for debugging and analysis)

As in the real data sets, instruction ``video_id`` carries the ``v_`` prefix of the file name and
ActivityNet-QA ``video_name`` does not. Instruction answers occasionally carry the literal
``QA_GT_caption_based_noisy`` marker, as VideoInstruct-100K does, which training strips.
The output is a pure function of ``(videos, seed, seconds, size, fps, test_fraction)``.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from fractions import Fraction

import numpy as np

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 220, 40),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
NUMBERS = ("zero", "one", "two", "three", "four")
NOISY_MARKER = "QA_GT_caption_based_noisy"
BACKGROUND = (30, 30, 30)

# ActivityNet-QA question types: 0 motion, 2 temporal, 4 color, 5 object, 7 number.
QTYPE = {"direction": 0, "first": 2, "after": 2, "last": 2, "colour": 4, "change": 4, "shape": 5, "count": 7,
         "before": 4, "which_dir": 0, "order_pair": 2}

# What each question kind needs from the video. "object": appearance detail of one moment (colour,
# shape, how many) — what the object branch's 8 full-resolution frames hold; "event": temporal
# order or motion, coarse appearance at most — what the event branch's every-frame, 4×4-pooled
# tokens hold; "both": fine appearance *and* when / how it moves. The written version is in
# docs/training.md.
NEEDS = {
    "colour": "object", "shape": "object", "count": "object", "change": "object",
    "direction": "event", "first": "both", "last": "both", "after": "both",
    "before": "both", "which_dir": "both", "order_pair": "event",
}
# The report groups of bench/table2.py (the types: count, colour, shape, direction, order,
# "what appears after").
REPORT_TYPE = {
    "count": "count", "colour": "colour", "change": "colour", "before": "colour", "shape": "shape",
    "direction": "direction", "which_dir": "direction", "first": "order", "last": "order",
    "order_pair": "order", "after": "after",
}


@dataclass
class SynthObject:
    """One object: drawn from ``appear`` (seconds) to the end of the clip."""

    shape: str
    colour: str
    appear: float
    start: tuple[float, float]  # centre (x, y) in pixels at ``appear``
    direction: str
    speed: float  # pixels per second
    radius: float
    change_at: float | None = None  # time the colour changes (None: never)
    new_colour: str | None = None

    def colour_at(self, t: float) -> str:
        if self.change_at is not None and t >= self.change_at:
            return self.new_colour
        return self.colour

    def centre_at(self, t: float) -> tuple[float, float]:
        dx, dy = DIRECTIONS[self.direction]
        d = self.speed * (t - self.appear)
        return self.start[0] + dx * d, self.start[1] + dy * d

    @property
    def final_colour(self) -> str:
        return self.new_colour if self.new_colour is not None else self.colour

    def name(self) -> str:
        """How questions refer to the object when it first appears: "red circle"."""
        return f"{self.colour} {self.shape}"


@dataclass
class Scene:
    video_id: str
    seconds: float
    size: int
    objects: list[SynthObject] = field(default_factory=list)


def make_scene(rng: np.random.Generator, video_id: str, seconds: float, size: int) -> Scene:
    """Draw a random scene: 1–3 objects, distinct shapes and colours, staggered appearances."""
    # Appearance times spaced >= 1.5 s so the order survives 1 fps sampling; the first at t=0, the
    # last by 75 % of the clip (so it is seen moving): short clips hold fewer objects.
    n_max = min(3, 1 + int(seconds * 0.75 / 1.5 + 1e-9))
    n = int(rng.integers(1, n_max + 1))
    shapes = rng.permutation(SHAPES)[:n]
    colours = list(rng.permutation(list(COLOURS)))
    span = min(max(seconds * 0.6, 1.5 * (n - 1)), seconds * 0.75)
    gaps = np.sort(rng.uniform(0, 1, size=n - 1)) if n > 1 else np.array([])
    appear = [0.0] + [float(round(1.5 * (i + 1) + g * (span - 1.5 * (n - 1)), 2)) for i, g in enumerate(gaps)]
    objects = []
    radius = size / 10
    margin = radius + 2
    for i in range(n):
        direction = str(rng.choice(list(DIRECTIONS)))
        life = seconds - appear[i]
        travel = min(size * 0.5, size - 2 * margin - 1)
        speed = travel / max(life, 1e-3)
        dx, dy = DIRECTIONS[direction]
        # Start so the whole trajectory stays inside the frame.
        def axis_start(d):
            if d > 0:
                return float(rng.uniform(margin, size - margin - travel))
            if d < 0:
                return float(rng.uniform(margin + travel, size - margin))
            return float(rng.uniform(margin, size - margin))
        obj = SynthObject(shape=str(shapes[i]), colour=str(colours[i]), appear=appear[i],
                          start=(axis_start(dx), axis_start(dy)), direction=direction,
                          speed=float(speed), radius=float(radius))
        objects.append(obj)
    # Maybe one object changes to a colour nobody else uses, half-way through its life.
    if rng.uniform() < 0.5:
        i = int(rng.integers(0, n))
        spare = colours[n:]
        obj = objects[i]
        obj.new_colour = str(spare[int(rng.integers(0, len(spare)))])
        obj.change_at = float(round(obj.appear + (seconds - obj.appear) / 2, 2))
    return Scene(video_id=video_id, seconds=seconds, size=size, objects=objects)


def _draw(frame: np.ndarray, shape: str, cx: float, cy: float, r: float, rgb) -> None:
    frame[_shape_mask(frame.shape[0], frame.shape[1], shape, cx, cy, r)] = rgb


def _shape_mask(h: int, w: int, shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    """``bool [h, w]``: the pixels ``shape`` covers (what :func:`render` paints)."""
    yy, xx = np.mgrid[0:h, 0:w]
    if shape == "circle":
        m = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    elif shape == "square":
        m = (np.abs(xx - cx) <= r * 0.9) & (np.abs(yy - cy) <= r * 0.9)
    elif shape == "triangle":  # apex up
        top, bottom = cy - r, cy + r
        half = (yy - top) / (2 * r) * r  # half-width grows linearly from the apex
        m = (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half)
    else:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    return m


def render(scene: Scene, fps: float) -> np.ndarray:
    """Frames ``uint8 [round(seconds*fps), size, size, 3]`` of ``scene``."""
    n = max(1, int(round(scene.seconds * fps)))
    frames = np.empty((n, scene.size, scene.size, 3), dtype=np.uint8)
    for i in range(n):
        t = i / fps
        f = np.empty((scene.size, scene.size, 3), dtype=np.uint8)
        f[:] = BACKGROUND
        for obj in scene.objects:
            if t >= obj.appear:
                cx, cy = obj.centre_at(t)
                _draw(f, obj.shape, cx, cy, obj.radius, COLOURS[obj.colour_at(t)])
        frames[i] = f
    return frames


def render_masks(scene: Scene, times) -> np.ndarray:
    """Ground-truth instance masks ``int64 [len(times), size, size]`` of ``scene`` at ``times``
    (seconds): 0 = background, ``i + 1`` = ``scene.objects[i]``, later objects drawn over earlier
    ones exactly as :func:`render` paints them."""
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    masks = np.zeros((len(times), scene.size, scene.size), dtype=np.int64)
    for j, t in enumerate(times):
        for i, obj in enumerate(scene.objects):
            if t >= obj.appear:
                cx, cy = obj.centre_at(t)
                masks[j][_shape_mask(scene.size, scene.size, obj.shape, cx, cy, obj.radius)] = i + 1
    return masks


def event_times(scene: Scene) -> list[float]:
    """The times (seconds, sorted, after 0) at which the scene changes: an object appears or changes
    colour. They cut the clip into the known event intervals."""
    times = {o.appear for o in scene.objects} | {o.change_at for o in scene.objects if o.change_at is not None}
    return sorted(t for t in times if t > 0)


def scene_from_dict(d: dict) -> Scene:
    """The inverse of ``dataclasses.asdict`` for a :class:`Scene` (a ``meta.json`` entry)."""
    objects = [SynthObject(**{**o, "start": tuple(o["start"])}) for o in d["objects"]]
    return Scene(video_id=d["video_id"], seconds=d["seconds"], size=d["size"], objects=objects)


def write_mp4(path: str, frames: np.ndarray, fps: float) -> str:
    """Write ``frames uint8 [T, H, W, 3]`` (H, W even) to ``path`` with PyAV (H.264, else MPEG-4).

    Written to ``path + ".tmp"`` and renamed, so an interrupted run leaves no truncated video."""
    import av  # noqa: PLC0415

    t, h, w, c = frames.shape
    if c != 3 or h % 2 or w % 2:
        raise ValueError(f"frames must have shape [T, H, W, 3] with even H, W, got {frames.shape}")
    tmp = path + ".tmp"
    rate = Fraction(fps).limit_denominator(1000)
    with av.open(tmp, mode="w", format="mp4") as container:
        try:
            stream = container.add_stream("libx264", rate=rate)
            stream.options = {"crf": "18", "preset": "veryfast", "threads": "1"}
        except (av.FFmpegError, ValueError, KeyError):
            stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return path


def questions_for(scene: Scene) -> list[tuple[str, str, str]]:
    """All ``(kind, question, answer)`` pairs that the scene answers unambiguously."""
    objs = sorted(scene.objects, key=lambda o: o.appear)
    qa = []
    for o in objs:
        qa.append(("colour", f"What color is the {o.shape} at the end of the video?", o.final_colour))
        qa.append(("shape", f"What shape is the {o.colour} object when it appears?", o.shape))
        qa.append(("direction", f"In which direction does the {o.shape} move?", o.direction))
        if o.new_colour is not None:
            qa.append(("change", f"What color does the {o.shape} turn into?", o.new_colour))
    qa.append(("count", "How many objects are there at the end of the video?", NUMBERS[len(objs)]))
    if len(objs) > 1:
        qa.append(("first", "Which object appears first?", objs[0].name()))
        qa.append(("last", "Which object appears last?", objs[-1].name()))
        for a, b in zip(objs, objs[1:]):
            qa.append(("after", f"What appears after the {a.name()}?", b.name()))
    qa += extra_questions(scene)
    return qa


_KIND_PATTERNS = (
    ("count", "How many objects"), ("before", "before it changes?"), ("colour", "at the end of the video?"),
    ("change", "turn into?"), ("shape", "What shape"), ("direction", "In which direction"),
    ("first", "appears first?"), ("last", "appears last?"), ("after", "What appears after"),
    ("which_dir", "Which object moves"), ("order_pair", "appear before or after"),
)


def question_kind(question: str) -> str:
    """The kind (a key of :data:`NEEDS`) of a question written by :func:`questions_for`.

    Raises ``ValueError`` naming the question when it is not one of the synthetic templates."""
    for kind, pattern in _KIND_PATTERNS:
        if pattern in question:
            return kind
    raise ValueError(f"question is not a synthetic-data template: {question!r}")


def extra_questions(scene: Scene) -> list[tuple[str, str, str]]:
    """The question kinds added to tell the two branches apart (see :data:`NEEDS`):

    * ``before`` (both): the colour of an object *before* it changes — fine colour plus when;
    * ``which_dir`` (both): which object (colour + shape) moves in a given direction, asked only
      when exactly one object does — motion plus identity;
    * ``order_pair`` (event): does the X-coloured object appear before or after the Y-coloured one —
      order only, colour at the coarse level the pooled event tokens keep; ``before`` and ``after``
      are balanced: the pairs alternate which object is named first, starting from the parity of
      the video's number (a pure function of the scene).
    """
    objs = sorted(scene.objects, key=lambda o: o.appear)
    digits = "".join(ch for ch in scene.video_id if ch.isdigit())
    qa = []
    for o in objs:
        if o.new_colour is not None:
            qa.append(("before", f"What color is the {o.shape} before it changes?", o.colour))
    for d in DIRECTIONS:
        movers = [o for o in objs if o.direction == d]
        if len(movers) == 1:
            qa.append(("which_dir", f"Which object moves {d}?", movers[0].name()))
    k = int(digits[-6:]) % 2 if digits else 0
    for i, a in enumerate(objs):
        for b in objs[i + 1 :]:
            x, y, ans = (a, b, "before") if k % 2 == 0 else (b, a, "after")
            qa.append(("order_pair", f"Does the {x.colour} object appear before or after the {y.colour} object?", ans))
            k += 1
    return qa


def generate(out: str, videos: int, seed: int = 0, seconds: float = 8.0, size: int = 112, fps: float = 4.0,
             test_fraction: float = 0.2, noisy_fraction: float = 0.1, progress: bool = True) -> dict:
    """Write a synthetic data set to ``out`` (see the module docstring). Returns a summary dict.

    Args:
        videos: number of videos (>= 2 so that at least one is held out for testing).
        seed: everything (scenes, questions, split, markers) is a pure function of the seed.
        seconds: clip length; size: frame width = height (even); fps: frame rate of the mp4.
        test_fraction: share of videos held out for ``qa/test_*.json`` (at least one).
        noisy_fraction: share of instruction answers given the ``QA_GT_caption_based_noisy`` marker.
    """
    from tqdm import tqdm  # noqa: PLC0415

    if isinstance(videos, bool) or not isinstance(videos, int) or videos < 2:
        raise ValueError(f"videos must be an int >= 2 (one is held out for testing), got {videos!r}")
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 32 or size % 2:
        raise ValueError(f"size must be an even int >= 32, got {size!r}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out, "videos"), exist_ok=True)
    os.makedirs(os.path.join(out, "qa"), exist_ok=True)
    n_test = max(1, int(round(videos * test_fraction)))
    n_train = videos - n_test
    scenes = [make_scene(rng, f"v_synth{i:05d}", seconds, size) for i in range(videos)]
    instructions, test_q, test_a = [], [], []
    for i, scene in enumerate(scenes):
        for j, (kind, q, a) in enumerate(questions_for(scene)):
            if i < n_train:
                if rng.uniform() < noisy_fraction:
                    a = f"{a} {NOISY_MARKER}"
                instructions.append({"video_id": scene.video_id, "q": q, "a": a})
            else:
                name = scene.video_id[2:]  # ActivityNet-QA names drop the file's "v_" prefix
                qid = f"{scene.video_id}_{j}"
                test_q.append({"video_name": name, "question": q, "question_id": qid})
                test_a.append({"answer": a, "type": QTYPE[kind], "kind": kind, "question_id": qid})
    for scene in tqdm(scenes, desc="synth", unit="video", disable=not progress):
        path = os.path.join(out, "videos", f"{scene.video_id}.mp4")
        write_mp4(path, render(scene, fps), fps)

    def dump(obj, *parts):
        p = os.path.join(out, *parts)
        with open(p + ".tmp", "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1)
        os.replace(p + ".tmp", p)

    dump(instructions, "instructions.json")
    dump(test_q, "qa", "test_q.json")
    dump(test_a, "qa", "test_a.json")
    meta = {"seed": seed, "seconds": seconds, "size": size, "fps": fps, "train_videos": n_train,
            "test_videos": n_test, "scenes": [asdict(s) for s in scenes]}
    dump(meta, "meta.json")
    return {"videos": videos, "train_videos": n_train, "test_videos": n_test,
            "instructions": len(instructions), "test_questions": len(test_q)}
