"""load_video on videos written here with PyAV: known length, rate and content (frame i shows its
index i as two grey blocks), plus broken and non-video files."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from slotvlm.video import VideoError, load_video  # noqa: E402

W, H = 64, 48


def index_image(i: int) -> np.ndarray:
    """Frame i < 400: left half grey (i // 20) * 12 + 8, right half (i % 20) * 12 + 8 (robust to
    lossy coding: levels are 12 apart)."""
    img = np.empty((H, W, 3), np.uint8)
    img[:, : W // 2] = (i // 20) * 12 + 8
    img[:, W // 2 :] = (i % 20) * 12 + 8
    return img


def read_index(frame: torch.Tensor) -> int:
    f = frame.float()
    left = f[8:-8, 4 : W // 2 - 8].mean().item()
    right = f[8:-8, W // 2 + 8 : -4].mean().item()
    return int(round((left - 8) / 12)) * 20 + int(round((right - 8) / 12))


def write_video(path, times, *, fmt=None, rate=25, size=(W, H)):
    """Encode one frame per timestamp in ``times`` (seconds) with libx264 (frame i = index_image(i))."""
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times):
            img = index_image(i)
            if (img.shape[1], img.shape[0]) != size:
                img = np.ascontiguousarray(np.resize(img, (size[1], size[0], 3)))
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = int(round(t * 1000)), Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def remux_faststart(src, dst) -> bytes:
    """Copy src's video packets into a "faststart" mp4 (index before the data); return its bytes."""
    with av.open(str(src)) as i, av.open(str(dst), "w", options={"movflags": "faststart"}) as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for p in i.demux(i.streams.video[0]):
            if p.dts is not None:
                p.stream = s
                o.mux(p)
    return open(dst, "rb").read()


def cfr(seconds, fps):
    return [i / fps for i in range(int(round(seconds * fps)))]


@pytest.fixture(scope="module")
def clip12(tmp_path_factory):
    """12 s at 25 fps: 300 frames."""
    return write_video(tmp_path_factory.mktemp("v") / "clip12.mp4", cfr(12, 25))


def test_12s_25fps_at_1fps_gives_12_frames_in_order(clip12):
    frames, times = load_video(clip12, fps=1.0)
    assert frames.dtype == torch.uint8 and frames.shape[1:] == (H, W, 3)
    assert abs(frames.shape[0] - 12) <= 1
    assert times.dtype == torch.float64 and times.shape == (frames.shape[0],)
    # Frame i is shown at i / 25 s: at 1 fps the kept frames are 0, 25, 50, ...
    assert [read_index(f) for f in frames] == [25 * k for k in range(frames.shape[0])]
    assert torch.allclose(times, torch.arange(frames.shape[0], dtype=torch.float64), atol=1e-6)


def test_other_rates_and_max_frames(clip12):
    frames, times = load_video(clip12, fps=5.0)
    assert [read_index(f) for f in frames] == [5 * k for k in range(60)]
    assert torch.all(times[1:] > times[:-1])
    # max_frames keeps that many of the 1 fps samples, spread uniformly (first and last included)
    frames, times = load_video(clip12, fps=1.0, max_frames=4)
    assert [read_index(f) for f in frames] == [0, 100, 175, 275]  # seconds 0, 4, 7, 11
    assert times.tolist() == pytest.approx([0.0, 4.0, 7.0, 11.0])
    frames, _ = load_video(clip12, fps=25.0)  # the native rate: every frame
    assert [read_index(f) for f in frames] == list(range(300))


class _CountingContainer:
    """Wraps a PyAV container and counts the frames its decode() yields."""

    def __init__(self, container, counter):
        self._c, self._counter = container, counter

    def __getattr__(self, name):
        return getattr(self._c, name)

    def __enter__(self):
        self._c.__enter__()
        return self

    def __exit__(self, *exc):
        return self._c.__exit__(*exc)

    def decode(self, *args, **kwargs):
        for frame in self._c.decode(*args, **kwargs):
            self._counter.append(frame.pts)
            yield frame


def test_stops_decoding_once_the_frames_are_found(clip12, monkeypatch):
    """max_frames=1 needs only the middle second (t = 5 s, frame 125). Without seeking, decoding
    must stop right after it instead of running through all 300 frames."""
    import slotvlm.video as video

    decoded = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: _CountingContainer(real_open(*a, **k), decoded))
    monkeypatch.setattr(video, "_SEEK_GAP_S", float("inf"))
    monkeypatch.setattr(video, "_SKIP_NONREF", False)  # the sequential path (the planned one: test_video_loader.py)
    frames, times = load_video(clip12, fps=1.0, max_frames=1)
    assert times.tolist() == [5.0] and read_index(frames[0]) == 125
    assert 126 <= len(decoded) < 140
    decoded.clear()
    load_video(clip12, fps=1.0)  # all of it: every frame up to the last sample (11 s = frame 275)
    assert 276 <= len(decoded) < 290


def test_long_gaps_are_skipped_by_seeking(clip12, monkeypatch):
    """With a few samples far apart, load_video seeks to the keyframe before each one (the test
    clip has a keyframe at least every ~1 s): same frames as decoding everything, far fewer decoded."""
    import slotvlm.video as video

    decoded = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: _CountingContainer(real_open(*a, **k), decoded))
    monkeypatch.setattr(video, "_SKIP_NONREF", False)  # compare with the plain sequential decode
    seek_frames, seek_times = load_video(clip12, fps=1.0, max_frames=3)
    n_seek = len(decoded)
    decoded.clear()
    monkeypatch.setattr(video, "_SEEK_GAP_S", float("inf"))
    frames, times = load_video(clip12, fps=1.0, max_frames=3)
    assert [read_index(f) for f in frames] == [0, 150, 275]  # seconds 0, 6 (5.5 rounded), 11
    assert torch.equal(seek_frames, frames) and torch.equal(seek_times, times)
    assert n_seek < len(decoded) / 2, (n_seek, len(decoded))


def test_truncated_faststart_file(tmp_path):
    """A faststart mp4 (index first) cut at 85 %: it opens, but its frames stop before the 12 s it
    claims. Reading all of it is a VideoError; the first seconds, which are intact, can be read."""
    src = write_video(tmp_path / "src.mp4", cfr(12, 25))
    data = remux_faststart(src, tmp_path / "fs.mp4")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.85)])
    with pytest.raises(VideoError, match="cut.mp4"):
        load_video(cut, fps=1.0)
    frames, times = load_video(cut, fps=1.0, max_frames=1)
    assert times.tolist() == [5.0] and read_index(frames[0]) == 125


def test_variable_frame_rate_uses_timestamps(tmp_path):
    rng = np.random.default_rng(1)
    times = np.cumsum(np.r_[0.0, rng.uniform(0.03, 0.4, 40)])
    path = write_video(tmp_path / "vfr.mp4", times)
    frames, got = load_video(path, fps=1.0)
    # expected: for each t = 0, 1, 2, ... inside the clip, the frame whose timestamp is nearest
    times_ms = np.round(times * 1000) / 1000
    targets = np.arange(0, np.ceil(times_ms[-1] + 1e-3))
    want = []
    for t in targets:
        j = int(np.argmin(np.abs(times_ms - t) + 1e-9 * np.arange(len(times_ms))))
        if not want or want[-1] != j:
            want.append(j)
    assert [read_index(f) for f in frames] == want
    np.testing.assert_allclose(got.numpy(), times_ms[want], atol=2e-3)


def test_stream_without_timestamps_or_duration(tmp_path):
    """A raw H.264 stream has neither pts nor a duration: times come from the frame rate."""
    path = write_video(tmp_path / "raw.h264", cfr(4, 25), fmt="h264")
    frames, times = load_video(path, fps=1.0)
    assert [read_index(f) for f in frames] == [0, 25, 50, 75]
    frames, times = load_video(path, fps=1.0, max_frames=2)
    assert [read_index(f) for f in frames] == [0, 75]


def test_audio_stream_first_is_ignored(tmp_path):
    """An mp4 whose first stream is audio (AAC) and second video: the video stream is decoded."""
    path = str(tmp_path / "av.mp4")
    with av.open(path, "w") as c:
        a = c.add_stream("aac", rate=16000)
        a.layout = "mono"
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        n_audio = 0
        for i in range(100):  # 4 s of video, audio kept alongside
            for p in v.encode(av.VideoFrame.from_ndarray(index_image(i), format="rgb24")):
                c.mux(p)
            while n_audio < (i + 1) * 640:
                fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                fr.sample_rate, fr.pts = 16000, n_audio
                n_audio += 1024
                for p in a.encode(fr):
                    c.mux(p)
        for s in (v, a):
            for p in s.encode():
                c.mux(p)
    frames, times = load_video(path, fps=1.0)
    assert [read_index(f) for f in frames] == [0, 25, 50, 75]
    assert times.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_very_short_clip(tmp_path):
    path = write_video(tmp_path / "short.mp4", cfr(0.2, 25))  # 5 frames, 0.2 s
    frames, times = load_video(path, fps=1.0)
    assert frames.shape[0] == 1 and read_index(frames[0]) == 0 and times.tolist() == [0.0]
    path = write_video(tmp_path / "one.mp4", [0.0])  # a single frame
    frames, _ = load_video(path)
    assert frames.shape[0] == 1 and read_index(frames[0]) == 0


def test_fps_above_native_rate_is_an_error(clip12):
    with pytest.raises(ValueError, match=r"fps=30.0 is above the native frame rate 25"):
        load_video(clip12, fps=30.0)


@pytest.mark.parametrize("fps", [0, -1.0, float("nan"), float("inf"), "1"])
def test_bad_fps(clip12, fps):
    with pytest.raises(ValueError, match="fps"):
        load_video(clip12, fps=fps)


@pytest.mark.parametrize("max_frames", [0, -3, 2.5, True])
def test_bad_max_frames(clip12, max_frames):
    with pytest.raises(ValueError, match="max_frames"):
        load_video(clip12, max_frames=max_frames)


def test_missing_path(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(FileNotFoundError) as info:
        load_video(missing)
    assert str(missing) in str(info.value)


def _broken_files(tmp_path, clip12):
    data = open(clip12, "rb").read()
    files = {
        "truncated_half.mp4": data[: len(data) // 2],
        "truncated_tail.mp4": data[: len(data) - 2000],
        "garbage.mp4": np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes(),
        "empty.mp4": b"",
        "notes.txt": b"this is a text file, not a video\n" * 50,
        "header_only.mp4": data[:64],
    }
    # a "faststart" mp4 (index first) cut in half: opens fine, then runs out of frames
    fsd = remux_faststart(clip12, tmp_path / "faststart.mp4")
    files["faststart_truncated.mp4"] = fsd[: len(fsd) // 2]
    from PIL import Image

    png = tmp_path / "picture.png"
    Image.fromarray(index_image(3)).save(png)
    paths = {name: tmp_path / name for name in files}
    for name, blob in files.items():
        paths[name].write_bytes(blob)
    paths["picture.png"] = png
    return paths


def test_broken_and_non_video_files_raise_video_error(tmp_path, clip12):
    for name, path in _broken_files(tmp_path, clip12).items():
        with pytest.raises(VideoError) as info:
            load_video(path)
        assert isinstance(info.value, ValueError)
        assert str(path) in str(info.value), (name, str(info.value))


def test_directory_is_a_video_error(tmp_path):
    with pytest.raises(VideoError, match=str(tmp_path)):
        load_video(tmp_path)


def test_resolution_change_is_rescaled(tmp_path):
    """Two clips concatenated at different sizes (raw H.264 streams can be joined byte-wise)."""
    a = write_video(tmp_path / "a.h264", cfr(2, 25), fmt="h264")
    b = write_video(tmp_path / "b.h264", cfr(2, 25), fmt="h264", size=(32, 24))
    joined = tmp_path / "ab.h264"
    joined.write_bytes(open(a, "rb").read() + open(b, "rb").read())
    frames, _ = load_video(joined, fps=1.0)
    assert frames.shape == (4, H, W, 3)
