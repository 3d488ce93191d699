"""The Triton LayerNorm of the folded one-head path (``kernels/layer_norm.py``,
``slotvlm::layer_norm_fwd`` / ``slotvlm::layer_norm_bwd``, ``slotvlm.ops.fused.layer_norm``): output
and every gradient against fp64 ``torch.nn.functional.layer_norm`` under the interpreter (odd widths,
row counts that are not a multiple of the tile, one row, packed tokens, with and without the affine
parameters), the in-kernel dtype conversion, determinism of the dw/db reduction, opcheck, and the
module's folded path with the LayerNorm variants ``nn.LayerNorm`` allows."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from slotvlm import MultiHeadSlotAttention, SlotAttention
import slotvlm.nn.slot_attention as sa_module

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
interpreter_only = pytest.mark.skipif(
    not INTERPRET, reason="interpreter tests: run with TRITON_INTERPRET=1 (conftest's default)"
)
fused = pytest.importorskip("slotvlm.ops.fused")
import slotvlm.kernels.layer_norm as kln  # noqa: E402

ATOL, RTOL = 1e-4, 1e-3


def close(actual, expected, name, atol=ATOL, rtol=RTOL):
    assert actual is not None and expected is not None, name
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def _params(D, affine: str):
    """(weight, bias) for "affine" (both), "no-bias" (nn.LayerNorm(bias=False)), "none"."""
    w = (1 + 0.5 * torch.randn(D)).requires_grad_() if affine != "none" else None
    b = torch.randn(D).requires_grad_() if affine == "affine" else None
    return w, b


def _reference(x, w, b, eps, dy):
    """fp64 forward and gradients of torch's LayerNorm."""
    xd = x.detach().double().requires_grad_()
    wd = w.detach().double().requires_grad_() if w is not None else None
    bd = b.detach().double().requires_grad_() if b is not None else None
    y = nn.functional.layer_norm(xd, (x.shape[-1],), wd, bd, eps)
    y.backward(dy.double())
    return y, xd.grad, (wd.grad if wd is not None else None), (bd.grad if bd is not None else None)


CASES = [
    pytest.param((3, 37, 40), "affine", id="odd-D40-rows111"),
    pytest.param((5, 129), "affine", id="odd-D129-5-rows"),
    pytest.param((1, 1, 64), "affine", id="N=1-one-row"),
    pytest.param((2053, 24), "affine", id="2053-rows-64-programs-grid-stride"),
    pytest.param((2, 9, 33), "no-bias", id="no-bias-D33"),
    pytest.param((2, 9, 33), "none", id="no-affine-D33"),
]


@interpreter_only
@pytest.mark.parametrize("shape,affine", CASES)
def test_forward_and_gradients_match_fp64(shape, affine):
    D = shape[-1]
    x = (3 * torch.randn(shape) + 2).requires_grad_()
    w, b = _params(D, affine)
    y = fused.layer_norm(x, w, b, 1e-5)
    dy = torch.randn_like(y)
    y.backward(dy)
    want, dx, dw, db = _reference(x, w, b, 1e-5, dy)
    assert y.shape == x.shape and y.dtype == x.dtype
    close(y, want, "y")
    close(x.grad, dx, "dx")
    if w is not None:
        close(w.grad, dw, "dweight")
    if b is not None:
        close(b.grad, db, "dbias")


@interpreter_only
def test_packed_varlen_tokens_are_rows():
    """Packed ``[T, D]`` tokens (the varlen layout) are normalised row by row: equal to the padded
    batch's real tokens."""
    lengths = [9, 0, 14]
    D = 40
    x = torch.randn(sum(lengths), D, requires_grad=True)
    w, b = _params(D, "affine")
    y = fused.layer_norm(x, w, b, 1e-5)
    dy = torch.randn_like(y)
    y.backward(dy)
    want, dx, dw, db = _reference(x, w, b, 1e-5, dy)
    close(y, want, "y")
    close(x.grad, dx, "dx")
    close(w.grad, dw, "dweight")
    close(b.grad, db, "dbias")


@interpreter_only
def test_writes_the_requested_dtype_and_dx_in_xs_dtype():
    """fp32 x normalised straight to bf16 (the autocast case): y equals fp32 LayerNorm rounded to
    bf16 (to one bf16 rounding step), dx comes back in fp32 from a bf16 dy."""
    x = torch.randn(2, 21, 48, requires_grad=True)
    w, b = _params(48, "affine")
    y = fused.layer_norm(x, w, b, 1e-5, out_dtype=torch.bfloat16)
    assert y.dtype == torch.bfloat16
    dy = torch.randn(y.shape).to(torch.bfloat16)
    y.backward(dy)
    want, dx, dw, db = _reference(x, w, b, 1e-5, dy.float())
    close(y, want, "y (bf16)", atol=2e-2, rtol=8e-3)  # one bf16 rounding of values up to ~5
    assert x.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    close(x.grad, dx, "dx")
    close(w.grad, dw, "dweight")
    close(b.grad, db, "dbias")


@interpreter_only
def test_parameter_gradients_are_deterministic():
    """The dw/db partials of the programs are summed without atomics: the same bits every time,
    also for a second backward of the same forward (retain_graph)."""
    x = torch.randn(700, 40, requires_grad=True)
    w, b = _params(40, "affine")
    y, stats = torch.ops.slotvlm.layer_norm_fwd(x, w, b, 1e-5, torch.float32)
    assert stats.shape == (2, 700)
    dy = torch.randn_like(y)
    grads = []
    for _ in range(2):
        grads.append(torch.autograd.grad(y, (x, w, b), dy, retain_graph=True))
    for first, second in zip(*grads):
        assert torch.equal(first, second)
    _, dx, dw, db = _reference(x, w, b, 1e-5, dy)
    close(grads[0][1], dw, "dweight")
    close(grads[0][2], db, "dbias")


@interpreter_only
def test_frozen_parameters_get_no_gradient_work():
    x = torch.randn(4, 10, 16, requires_grad=True)
    w, b = torch.randn(16), torch.randn(16)  # not requiring grad
    y = fused.layer_norm(x, w, b, 1e-5)
    dy = torch.randn_like(y)
    y.backward(dy)
    close(x.grad, _reference(x, w, b, 1e-5, dy)[1], "dx")


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="D=9000"):
        fused.layer_norm(torch.randn(2, 9000), None, None)
    with pytest.raises(ValueError, match="weight"):
        fused.layer_norm(torch.randn(2, 8), torch.randn(7), None)
    with pytest.raises(ValueError, match="out_dtype"):
        fused.layer_norm(torch.randn(2, 8), None, None, out_dtype=torch.float64)


# ------------------------------------------------------------------ torch.library integration
@interpreter_only
@pytest.mark.parametrize("affine", ["affine", "none"])
def test_opcheck_layer_norm_ops(affine):
    x = torch.randn(3, 7, 24, requires_grad=True)
    w, b = _params(24, affine)
    torch.library.opcheck(torch.ops.slotvlm.layer_norm_fwd.default, (x, w, b, 1e-5, torch.float32))
    with torch.no_grad():
        y, stats = torch.ops.slotvlm.layer_norm_fwd(x, w, b, 1e-5, torch.float32)
    args = (x.detach(), None if w is None else w.detach(), torch.randn_like(y), stats, w is not None, torch.float32)
    torch.library.opcheck(torch.ops.slotvlm.layer_norm_bwd.default, args)


# ------------------------------------------------------------------ the module's folded path
def _pair(make):
    fast = make(backend="triton")
    with torch.no_grad():  # an affine transform that is not the identity (the init is w = 1, b = 0)
        for p in fast.norm_input.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + 1)
    ref = make(backend="torch")
    ref.load_state_dict(fast.state_dict())
    ref.double()
    return fast, ref


def _ln_variant(module, variant):
    if variant == "no-bias":
        module.norm_input = nn.LayerNorm(module.dim, bias=False)
    elif variant == "no-affine":
        module.norm_input = nn.LayerNorm(module.dim, elementwise_affine=False, eps=1e-3)
    return module


@interpreter_only
@pytest.mark.parametrize("variant", ["default", "no-bias", "no-affine"])
def test_module_folded_path_uses_the_kernel_and_matches_torch(monkeypatch, variant):
    """SlotAttention(backend="triton") (one head, folded) normalises its inputs with the Triton
    LayerNorm — masked — and still matches the fp64 torch backend in outputs and every gradient;
    the state_dict keys are the drop-in's. (fp32 without autocast uses the kernel only when told
    to: ``_INPUT_NORM_KERNEL = "always"``.)"""
    from triton_spy import LaunchCounter

    monkeypatch.setattr(sa_module, "_INPUT_NORM_KERNEL", "always")
    monkeypatch.setenv("SLOTVLM_WHOLE_ITERATION", "0")  # this tests the folded path's LayerNorm kernel

    fwd = LaunchCounter(monkeypatch, kln._layer_norm_fwd_kernel)
    bwd = LaunchCounter(monkeypatch, kln._layer_norm_bwd_kernel)

    def make(**kw):
        return _ln_variant(SlotAttention(5, 40, iters=2, hidden_dim=48, deterministic_init=True, **kw), variant)

    fast, ref = _pair(make)
    x = torch.randn(2, 19, 40)
    mask = torch.rand(2, 19) > 0.3
    xs, xd = x.clone().requires_grad_(), x.double().requires_grad_()
    out = fast(xs, mask=mask)
    want = ref(xd, mask=mask)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (want * g.double()).sum().backward()
    assert (fwd.n, bwd.n) == (1, 1)
    close(out, want, "slots")
    close(xs.grad, xd.grad, "d inputs")
    for (name, p), (_, pr) in zip(fast.named_parameters(), ref.named_parameters()):
        assert (p.grad is None) == (pr.grad is None), name
        if p.grad is not None:
            close(p.grad, pr.grad, name)
    assert list(fast.state_dict()) == list(ref.state_dict())


@interpreter_only
def test_module_varlen_folded_path_uses_the_kernel(monkeypatch):
    from triton_spy import LaunchCounter

    monkeypatch.setattr(sa_module, "_INPUT_NORM_KERNEL", "always")

    fwd = LaunchCounter(monkeypatch, kln._layer_norm_fwd_kernel)
    fast, ref = _pair(lambda **kw: SlotAttention(4, 24, iters=2, deterministic_init=True, **kw))
    cu = torch.tensor([0, 9, 9, 23], dtype=torch.int32)
    x = torch.randn(23, 24)
    xs, xd = x.clone().requires_grad_(), x.double().requires_grad_()
    out = fast.forward_varlen(xs, cu)
    want = ref.forward_varlen(xd, cu)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (want * g.double()).sum().backward()
    assert fwd.n == 1
    close(out, want, "slots")
    close(xs.grad, xd.grad, "d inputs")
    close(fast.norm_input.weight.grad, ref.norm_input.weight.grad, "norm_input.weight")


@interpreter_only
def test_unfolded_paths_keep_nn_layernorm(monkeypatch):
    """Multi-head, unfolded and torch modules never use the kernel; the folded one without autocast
    neither, by default (it would only add host time)."""
    from triton_spy import LaunchCounter

    monkeypatch.setattr(sa_module, "_INPUT_NORM_KERNEL", "always")

    fwd = LaunchCounter(monkeypatch, kln._layer_norm_fwd_kernel)
    MultiHeadSlotAttention(3, 16, heads=2, dim_head=8, iters=1, backend="triton")(torch.randn(2, 5, 16))
    unfolded = SlotAttention(3, 16, iters=1, backend="triton")
    unfolded.fold_projections = False
    unfolded(torch.randn(2, 5, 16))
    SlotAttention(3, 16, iters=1, backend="torch")(torch.randn(2, 5, 16))
    assert fwd.n == 0
    monkeypatch.setattr(sa_module, "_INPUT_NORM_KERNEL", "cast")
    SlotAttention(3, 16, iters=1, backend="triton")(torch.randn(2, 5, 16))
    assert fwd.n == 0


# ------------------------------------------------------------------ GPU
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET, reason="needs a CUDA GPU (compiled kernels)")
@pytest.mark.parametrize("D", [64, 1024, 4096])
def test_gpu_many_programs_match_torch(D):
    """On the GPU the backward runs up to 4 programs per SM, each writing dw/db partials.
    fp32 against fp64, bf16 output from fp32 input within 2x torch's own bf16 error, and two runs
    give the same bits."""
    torch.manual_seed(0)
    x = (2 * torch.randn(320 * 64, D, device="cuda") + 1).requires_grad_()
    w = (1 + 0.5 * torch.randn(D, device="cuda")).requires_grad_()
    b = torch.randn(D, device="cuda").requires_grad_()
    for out_dtype in (torch.float32, torch.bfloat16):
        y = fused.layer_norm(x, w, b, 1e-5, out_dtype=out_dtype)
        dy = torch.randn(y.shape, device="cuda").to(out_dtype)
        grads = [torch.autograd.grad(y, (x, w, b), dy, retain_graph=True) for _ in range(2)]
        for first, second in zip(*grads):
            assert torch.equal(first, second)
        want, dx, dw, db = _reference(x, w, b, 1e-5, dy.float())
        if out_dtype == torch.float32:
            close(y, want, "y")
        else:
            err = (y.double() - want).abs().max()
            torch_err = (nn.functional.layer_norm(x, (D,), w, b, 1e-5).to(out_dtype).double() - want).abs().max()
            assert err <= 2 * torch_err + 1e-6
        close(grads[0][0], dx, "dx")
        close(grads[0][1], dw, "dweight", atol=1e-3)
        close(grads[0][2], db, "dbias", atol=1e-3)
