"""Frame-index sampling ops of slotvlm._C against plain-Python references."""
import math

import pytest
import torch

from slotvlm._ext import ops


def uniform_ref(t, k):
    if k == 1:
        return [(t - 1) // 2]
    return [math.floor((t - 1) * i / (k - 1) + 0.5) for i in range(k)]


def fps_ref(n, native, target):
    out, i = [], 0
    while i / target < n / native - 1e-9:
        f = min(round(i / target * native), n - 1)
        if not out or f > out[-1]:
            out.append(f)
        i += 1
    return out


@pytest.mark.parametrize("t,k", [(8, 8), (300, 8), (37, 7), (9, 1), (1000, 13), (2, 2)])
def test_uniform_indices(t, k):
    got = ops.uniform_indices(t, k).tolist()
    assert got == uniform_ref(t, k)
    assert got[0] == (0 if k > 1 else got[0]) and len(set(got)) == k


@pytest.mark.parametrize("t,k", [(8, 4), (300, 8), (37, 7), (5, 5), (3, 8)])
def test_segment_midpoints(t, k):
    got = ops.segment_midpoints(t, k, allow_repeat=True).tolist()
    assert got == [((2 * i + 1) * t) // (2 * k) for i in range(k)]
    assert all(0 <= g < t for g in got) and got == sorted(got)


def test_repeat_when_fewer_frames_than_k():
    assert ops.uniform_indices(3, 8, allow_repeat=True).tolist() == [0, 0, 1, 1, 1, 1, 2, 2]
    assert ops.uniform_indices(1, 8, allow_repeat=True).tolist() == [0] * 8


@pytest.mark.parametrize("n,native,target", [(300, 25.0, 1.0), (301, 29.97, 1.0), (10, 25.0, 1.0), (90, 30.0, 2.0), (50, 10.0, 10.0)])
def test_sample_fps_indices(n, native, target):
    got = ops.sample_fps_indices(n, native, target).tolist()
    assert got == fps_ref(n, native, target)
    assert got == sorted(set(got)) and got[-1] < n


def test_twelve_seconds_at_one_fps():
    got = ops.sample_fps_indices(300, 25.0, 1.0).tolist()
    assert got == [25 * i for i in range(12)]


def test_max_frames_keeps_uniform_subset():
    full = ops.sample_fps_indices(3000, 25.0, 1.0).tolist()
    got = ops.sample_fps_indices(3000, 25.0, 1.0, max_frames=10).tolist()
    assert got == [full[i] for i in uniform_ref(len(full), 10)]


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: ops.uniform_indices(3, 8), "cannot pick k=8 distinct frames out of num_frames=3"),
        (lambda: ops.uniform_indices(0, 1), "num_frames must be > 0 .*got 0"),
        (lambda: ops.segment_midpoints(5, 0), "k must be > 0, got 0"),
        (lambda: ops.sample_fps_indices(0, 25.0, 1.0), "num_frames must be > 0 .*got 0"),
        (lambda: ops.sample_fps_indices(100, 25.0, 30.0), "target_fps=30 is above the video's native rate native_fps=25"),
        (lambda: ops.sample_fps_indices(100, 0.0, 1.0), "native_fps must be a positive number, got 0"),
        (lambda: ops.sample_fps_indices(100, 25.0, float("nan")), "target_fps must be a positive number, got nan"),
        (lambda: ops.sample_fps_indices(100, 25.0, 1.0, max_frames=0), "max_frames must be -1 .* got 0"),
    ],
)
def test_errors_are_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_returns_int64_cpu():
    t = ops.uniform_indices(10, 3)
    assert t.dtype == torch.int64 and t.device.type == "cpu"
