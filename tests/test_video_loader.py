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
