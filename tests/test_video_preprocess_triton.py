"""The GPU path of CLIP pre-processing (Triton kernels, kernels/clip_preprocess.py) against the C++
CPU path, which is bit-identical to transformers' CLIPImageProcessor (PIL backend). On CPU the
kernels run under TRITON_INTERPRET=1 (set by conftest), fp32 only; on a GPU also the other dtypes,
the dispatch of ``preprocess`` for CUDA tensors and its time for 180 frames."""
from __future__ import annotations

import os
import time

import pytest
import torch

from slotvlm.ops.video_ref import normalize_table, resample_taps, shortest_edge_size
from slotvlm.video import CLIP_MEAN, CLIP_STD, clip_preprocess_triton, preprocess

from conftest import CUDA, requires_cuda

pytest.importorskip("triton")
DEVICE = "cuda" if CUDA else "cpu"
needs_triton_here = pytest.mark.skipif(
    not CUDA and os.environ.get("TRITON_INTERPRET") != "1", reason="needs a GPU or TRITON_INTERPRET=1"
)


def natural_frames(t, h, w, seed=0):
    """Gradients + hard edges + noise: hits both the smooth and the clipping (0 / 255) paths."""
    g = torch.Generator().manual_seed(seed)
    yy = torch.linspace(0, 1, h).view(1, h, 1, 1)
    xx = torch.linspace(0, 1, w).view(1, 1, w, 1)
    img = 127 + 110 * torch.sin(9 * xx + 4 * yy + torch.rand(t, 1, 1, 3, generator=g) * 6)
    img = img + 60 * ((xx * 11).floor() % 2 - 0.5) + torch.randn(t, h, w, 3, generator=g) * 25
    return img.clamp(0, 255).round().to(torch.uint8)


@needs_triton_here
@pytest.mark.parametrize(
    "t,h,w,size,crop",
    [
        pytest.param(2, 48, 64, 224, 224, id="upsample-48x64"),
        pytest.param(1, 360, 640, 224, 224, id="downsample-360x640"),
        pytest.param(1, 301, 233, 224, 224, id="portrait-odd-301x233"),
        pytest.param(1, 97, 131, 40, 33, id="size40-crop33"),
    ],
)
def test_triton_preprocess_bit_identical_to_cpu(t, h, w, size, crop):
    frames = natural_frames(t, h, w, seed=h * w)
    ref = preprocess(frames, size=size, crop_size=crop)  # C++ op
    out = clip_preprocess_triton(frames.to(DEVICE), size, crop, CLIP_MEAN, CLIP_STD, 1 / 255, torch.float32)
    assert out.shape == (t, 3, crop, crop) and out.dtype == torch.float32
    assert torch.equal(out.cpu(), ref), f"max |diff| {(out.cpu() - ref).abs().max().item()}"


@needs_triton_here
def test_triton_preprocess_strided_input_and_empty_batch():
    frames = natural_frames(3, 70, 90, seed=1)
    view = frames[::2, 3:, :-5]  # non-contiguous
    ref = preprocess(view.contiguous(), size=64)
    out = clip_preprocess_triton(view.to(DEVICE), 64, 64, CLIP_MEAN, CLIP_STD, 1 / 255, torch.float32)
    assert torch.equal(out.cpu(), ref)
    empty = clip_preprocess_triton(frames[:0].to(DEVICE), 64, 64, CLIP_MEAN, CLIP_STD, 1 / 255, torch.float32)
    assert empty.shape == (0, 3, 64, 64)


def test_taps_and_table_match_pillow_definition():
    """The host-side pieces against first principles: weights of each output sum to 2^22 (up to
    rounding), taps stay inside the image, and the table is transformers' rescale/normalise."""
    for n_in, n_out in ((1920, 398), (64, 224), (5, 224), (301, 224)):
        first, length, w = resample_taps(n_in, n_out, 0, n_out)
        assert (first >= 0).all() and (first + length <= n_in).all()
        sums = w.sum(1).to(torch.int64)
        assert (sums - (1 << 22)).abs().max() <= w.shape[1]
        assert (w[torch.arange(w.shape[1]).view(1, -1) >= length.view(-1, 1)] == 0).all()
    lut = normalize_table(CLIP_MEAN, CLIP_STD)
    v = torch.tensor([0, 128, 255])
    expect = (v.double().mul(1 / 255).float().view(1, 3) - torch.tensor(CLIP_MEAN).view(3, 1)) / torch.tensor(CLIP_STD).view(3, 1)
    assert torch.equal(lut[:, v], expect)
    assert shortest_edge_size(1080, 1920, 224) == (224, 398)
    assert shortest_edge_size(640, 360, 224) == (398, 224)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(frames=torch.zeros(1, 8, 8, 3, dtype=torch.float32)), "dtype uint8"),
        (dict(frames=torch.zeros(1, 8, 8, 4, dtype=torch.uint8)), r"\[T, H, W, 3\]"),
        (dict(crop_size=300), "crop_size must be in"),
        (dict(size=0, crop_size=0), "size must be in"),
        (dict(frames=torch.zeros(1, 0, 8, 3, dtype=torch.uint8)), "H > 0"),
        (dict(dtype=torch.int32), "dtype must be"),
    ],
)
def test_triton_preprocess_errors(kwargs, match):
    args = dict(frames=torch.zeros(1, 8, 8, 3, dtype=torch.uint8), size=224, crop_size=224, mean=CLIP_MEAN,
                std=CLIP_STD, scale=1 / 255, dtype=torch.float32)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        clip_preprocess_triton(**args)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_preprocess_on_cuda_equals_cpu_without_host_copy(dtype):
    frames = natural_frames(4, 480, 854, seed=3)
    ref = preprocess(frames, dtype=dtype)
    out = preprocess(frames.cuda(), dtype=dtype)
    assert out.is_cuda and out.dtype == dtype
    assert torch.equal(out.cpu(), ref)


@pytest.mark.cuda
@requires_cuda
def test_preprocess_180_frames_cuda_time():
    """Target: 180 frames (480x854) in <= 2 ms on an H100. Printed; asserted only loosely here
    (the target is for an idle H100, the assertion must hold on any recent GPU)."""
    frames = natural_frames(180, 480, 854, seed=4).cuda()
    preprocess(frames)
    torch.cuda.synchronize()
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        preprocess(frames)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    ms = 1e3 * sorted(times)[len(times) // 2]
    print(f"preprocess 180 frames 480x854 on {torch.cuda.get_device_name()}: {ms:.2f} ms (median of 20)")
    assert ms < 50
