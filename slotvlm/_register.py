"""Python kernels of the ops of ``slotvlm._C``: imported by the extension's module init
(csrc/module.cpp), so they are registered whenever the ops are, however the extension was
imported (``import slotvlm._C``, :mod:`slotvlm._ext`, :mod:`slotvlm.video`).

- ``slowfast_pool``: its backward (``torch.library.register_autograd``), its CUDA kernel (the torch
  reference, which runs on the GPU) and a fake kernel for ``torch.compile``;
- ``clip_preprocess``: its CUDA kernel (the Triton kernels behind
  :func:`slotvlm.video.clip_preprocess_triton`, imported at the first CUDA call) and a fake kernel
  (not differentiable: its input is uint8).

Only torch is imported here (the extension is being initialised: nothing may import it again).
"""
from __future__ import annotations

import torch


def _slowfast_pool_other_device(features, num_slow, stride):
    from slotvlm.ops.video_ref import slowfast_pool_ref  # noqa: PLC0415

    return slowfast_pool_ref(features, num_slow, stride)


def _slowfast_pool_fake(features, num_slow=8, stride=4):
    B, T, H, W, D = features.shape
    return features.new_empty((B, num_slow, H, W, D)), features.new_empty((B, T, H // stride, W // stride, D))


def _clip_preprocess_cuda(frames, size, crop_size, mean, std, scale, dtype):
    from slotvlm.video import clip_preprocess_triton  # noqa: PLC0415  (imports triton; not at init)

    return clip_preprocess_triton(frames, size, crop_size, mean, std, scale, dtype)


def _clip_preprocess_fake(frames, size, crop_size, mean, std, scale, dtype):
    return frames.new_empty((frames.shape[0], 3, crop_size, crop_size), dtype=dtype)


def _slowfast_setup_context(ctx, inputs, output):
    features, num_slow, stride = (list(inputs) + [8, 4])[:3]
    ctx.shape, ctx.num_slow, ctx.stride = tuple(features.shape), num_slow, stride


def _slowfast_backward(ctx, grad_slow, grad_fast):
    """d features = scatter-add of grad_slow onto the chosen frames + grad_fast spread evenly over
    each s x s window."""
    B, T, H, W, D = ctx.shape
    s = ctx.stride
    ref = grad_slow if grad_slow is not None else grad_fast
    grad = torch.zeros(ctx.shape, dtype=ref.dtype, device=ref.device)
    if grad_fast is not None:
        g = grad_fast / (s * s)
        grad += g.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)
    if grad_slow is not None:
        idx = torch.ops.slotvlm.uniform_indices(T, ctx.num_slow, True).to(ref.device)
        grad.index_add_(1, idx, grad_slow)
    return grad, None, None


def register() -> None:
    torch.library.impl("slotvlm::slowfast_pool", "CUDA", _slowfast_pool_other_device)
    torch.library.impl("slotvlm::clip_preprocess", "CUDA", _clip_preprocess_cuda)
    for name, fn in (("slotvlm::slowfast_pool", _slowfast_pool_fake), ("slotvlm::clip_preprocess", _clip_preprocess_fake)):
        torch.library.register_fake(name, fn)
    torch.library.register_autograd("slotvlm::slowfast_pool", _slowfast_backward, setup_context=_slowfast_setup_context)


register()
