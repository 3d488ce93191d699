"""CPU micro-benchmarks of the video runtime (pytest-benchmark). Not part of the unit tests
(``python -m pytest tests`` does not collect ``bench/``)::

    python -m pytest bench/micro --benchmark-only --benchmark-autosave      # save a baseline
    # ... change something, rebuild ...
    python -m pytest bench/micro --benchmark-only --benchmark-compare       # against the last save
    python -m pytest bench/micro --benchmark-only --benchmark-compare=0001 --benchmark-compare-fail=mean:10%

Saved runs go to ``.benchmarks/`` (git-ignored). Each case also checks its result, so a fast but
wrong change fails here too. On a shared machine compare runs taken back to back.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from slotvlm.video import load_video, preprocess, sample_fps_indices, slowfast_pool, uniform_indices

pytest.importorskip("pytest_benchmark")


def frames(t, h, w):
    g = torch.Generator().manual_seed(h + w)
    return torch.randint(0, 256, (t, h, w, 3), dtype=torch.uint8, generator=g)


def test_sample_fps_indices(benchmark):
    idx = benchmark(sample_fps_indices, 18000, 30.0, 1.0)  # 10 min at 30 fps
    assert idx.shape == (600,) and idx[1].item() == 30


def test_uniform_indices(benchmark):
    idx = benchmark(uniform_indices, 600, 256)
    assert idx.shape == (256,) and idx[-1].item() == 599


@pytest.mark.parametrize("h,w", [(360, 640), (720, 1280), (1080, 1920)], ids=["360p", "720p", "1080p"])
def test_clip_preprocess(benchmark, h, w):
    x = frames(16, h, w)
    out = benchmark(preprocess, x)
    assert out.shape == (16, 3, 224, 224) and torch.isfinite(out).all()


def test_slowfast_pool(benchmark):
    feats = torch.randn(1, 64, 16, 16, 1024)
    slow, fast = benchmark(slowfast_pool, feats)
    assert slow.shape == (1, 8, 16, 16, 1024) and fast.shape == (1, 64, 4, 4, 1024)
    torch.testing.assert_close(fast[0, 0, 0, 0], feats[0, 0, :4, :4].mean((0, 1)))


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory):
    av = pytest.importorskip("av")
    path = tmp_path_factory.mktemp("clip") / "short.mp4"
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (360, 1280, 3), dtype=np.uint8)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 640, 360, "yuv420p"
        s.options = {"preset": "ultrafast"}
        for i in range(300):  # 10 s
            img = np.ascontiguousarray(base[:, 2 * i : 2 * i + 640])
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def test_load_video_short_clip(benchmark, short_clip):
    out, times = benchmark(load_video, short_clip, 1.0)
    assert out.shape == (10, 360, 640, 3) and times[1].item() == pytest.approx(1.0)
