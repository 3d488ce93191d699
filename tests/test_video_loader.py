"""load_videos (the concurrent multi-video loader used by predict) against load_video called one
video at a time: same frames, same order, failures in place."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("av")

from slotvlm.testing import make_clip  # noqa: E402
from slotvlm.video import VideoError, load_video, load_videos, preprocess  # noqa: E402


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    return [make_clip(d / f"c{i}.mp4", seconds=s, fps=4, size=48 + 16 * i) for i, s in enumerate((3, 5, 2, 4))]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_same_frames_in_order(clips, workers):
    got = list(load_videos(clips, fps=2.0, workers=workers))
    assert len(got) == len(clips)
    for path, (frames, times) in zip(clips, got):
        ref_f, ref_t = load_video(path, fps=2.0)
        assert torch.equal(frames, ref_f) and torch.equal(times, ref_t)


def test_preprocessed_and_max_frames(clips):
    got = list(load_videos(clips, fps=2.0, max_frames=3, size=32, workers=2))
    for path, px in zip(clips, got):
        assert torch.equal(px, preprocess(load_video(path, fps=2.0, max_frames=3)[0], size=32))
        assert px.shape[1:] == (3, 32, 32) and px.shape[0] <= 3


def test_failures_in_place_or_raised(clips, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    paths = [clips[0], str(bad), clips[1], str(tmp_path / "missing.mp4")]
    got = list(load_videos(paths, workers=2, return_exceptions=True))
    assert isinstance(got[1], VideoError) and isinstance(got[3], FileNotFoundError)
    assert torch.equal(got[0][0], load_video(clips[0])[0]) and torch.equal(got[2][0], load_video(clips[1])[0])
    with pytest.raises(VideoError, match="bad.mp4"):
        list(load_videos(paths, workers=2))


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(workers=0), "workers must be a positive int, got 0"), (dict(workers=1.5), "workers must be an int"),
     (dict(paths="one.mp4"), "list of video files")],
)
def test_bad_arguments(clips, kwargs, match):
    args = {"paths": clips, **kwargs}
    with pytest.raises(ValueError, match=match):
        load_videos(**args)


# ---------------------------------------------------------------------------------------------
# the planned decode (skip unreferenced frames that are not kept) against the plain decode
# ---------------------------------------------------------------------------------------------
def _both(monkeypatch, path, **kw):
    import slotvlm.video as video

    def no_fallback(*a):
        raise AssertionError("the planned decode fell back to the sequential one")

    with monkeypatch.context() as m:
        m.setattr(video, "_SKIP_NONREF", True)
        m.setattr(video, "_decode_at", no_fallback)
        planned = load_video(path, **kw)
    with monkeypatch.context() as m:
        m.setattr(video, "_SKIP_NONREF", False)
        plain = load_video(path, **kw)
    return planned, plain


@pytest.mark.parametrize(
    "times,rate,fps,max_frames",
    [
        pytest.param([i / 25 for i in range(300)], 25, 1.0, None, id="cfr-25fps-1fps"),
        pytest.param([i / 25 for i in range(300)], 25, 3.0, None, id="cfr-25fps-3fps"),
        pytest.param([i / 25 for i in range(300)], 25, 1.0, 5, id="cfr-max_frames-5"),
        pytest.param([0.0] + [0.1 + i * 0.07 + (0.3 if i > 60 else 0) for i in range(140)], 14, 1.0, None, id="vfr"),
    ],
)
def test_planned_decode_is_bit_identical(monkeypatch, tmp_path, times, rate, fps, max_frames):
    from test_video_load import read_index, write_video  # libx264 defaults: B-frames, unreferenced ones

    path = write_video(tmp_path / "b.mp4", times, rate=rate)
    (f1, t1), (f2, t2) = _both(monkeypatch, path, fps=fps, max_frames=max_frames)
    assert torch.equal(f1, f2) and torch.equal(t1, t2)
    # and the right frames: each kept frame is the one nearest its sample time
    idx = [read_index(f) for f in f1]
    for i, t in zip(idx, t1.tolist()):
        assert abs(times[i] - times[0] - t) < 1e-6


def test_planned_decode_h265_and_resolution(monkeypatch, tmp_path):
    av = pytest.importorskip("av")
    path = str(tmp_path / "h265.mp4")
    rng = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (72, 200, 3), dtype=torch.uint8, generator=rng).numpy()
    with av.open(path, "w") as c:
        s = c.add_stream("libx265", rate=30)
        s.width, s.height, s.pix_fmt = 96, 72, "yuv420p"
        s.options = {"preset": "ultrafast", "x265-params": "log-level=error"}
        for i in range(150):
            img = base[:, i % 100 : i % 100 + 96].copy()
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    (f1, t1), (f2, t2) = _both(monkeypatch, path, fps=1.0)
    assert f1.shape == (5, 72, 96, 3) and torch.equal(f1, f2) and torch.equal(t1, t2)
