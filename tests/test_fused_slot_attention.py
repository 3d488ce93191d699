"""The fused Triton slot attention (step, GRU gates, module) against fp64 PyTorch references.

Runs on CPU under Triton's interpreter (fp32). Every output and every gradient is compared with
a shared random upstream gradient. GPU (bf16/fp16) checks live in test_fused_gpu.py.
"""
from __future__ import annotations

import os

import pytest
import torch

from slotvlm import MultiHeadSlotAttention, SlotAttention
from slotvlm.ops.slot_attention_ref import slot_attention_step_ref

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="interpreter tests: run with TRITON_INTERPRET=1 (conftest's default)"
)

fused = pytest.importorskip("slotvlm.ops.fused")
import slotvlm.kernels.gru as kgru  # noqa: E402
import slotvlm.kernels.slot_attention as ksa  # noqa: E402
import slotvlm.kernels.slot_attention_deferred as ksd  # noqa: E402
from triton_spy import LaunchCounter

ATOL, RTOL = 1e-4, 1e-3


def close(actual, expected, name):
    assert actual is not None and expected is not None, name
    torch.testing.assert_close(actual.double(), expected.double(), atol=ATOL, rtol=RTOL, msg=lambda m: f"{name}: {m}")


def _step_inputs(P, K, H, Dh, N, masked):
    q = torch.randn(P, K, H, Dh)
    k = torch.randn(P, N, H, Dh)
    v = torch.randn(P, N, H, Dh)
    mask = None
    if masked:
        mask = torch.rand(P, N) > 0.3
        mask[-1] = False  # an all-padding row
    return q, k, v, mask


def _ref_step_grads(q, k, v, mask, scale, du, da):
    qd, kd, vd = (t.double().requires_grad_() for t in (q, k, v))
    u, a = slot_attention_step_ref(qd, kd, vd, mask, scale=scale, eps=1e-8, return_attn=True)
    ((u * du.double()).sum() + (a * da.double()).sum()).backward()
    return u, a, qd.grad, kd.grad, vd.grad


STEP_CASES = [
    pytest.param(2, 7, 1, 40, 37, False, id="odd-K7-D40-N37"),
    pytest.param(3, 7, 1, 40, 37, True, id="mask-with-all-padding-row"),
    pytest.param(2, 5, 3, 8, 21, True, id="multihead-H3"),
    pytest.param(1, 20, 1, 16, 18, True, id="many-slots-K20"),
]


@pytest.mark.parametrize("P,K,H,Dh,N,masked", STEP_CASES)
def test_step_matches_fp64_reference(P, K, H, Dh, N, masked):
    q, k, v, mask = _step_inputs(P, K, H, Dh, N, masked)
    scale = Dh**-0.5
    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
    u, a = fused.slot_attention_step(qs, ks, vs, mask, scale=scale, return_attn=True)
    du, da = torch.randn_like(u), torch.randn_like(a)
    ((u * du).sum() + (a * da).sum()).backward()
    ru, ra, rdq, rdk, rdv = _ref_step_grads(q, k, v, mask, scale, du, da)
    close(u, ru, "updates")
    close(a, ra, "attn")
    close(qs.grad, rdq, "dq")
    close(ks.grad, rdk, "dk")
    close(vs.grad, rdv, "dv")
    assert torch.isfinite(u).all()
    if masked:  # all-padding row: zero updates, zero attention, zero k/v gradients
        assert u[-1].abs().max() == 0 and a[-1].abs().max() == 0
        assert ks.grad[-1].abs().max() == 0 and vs.grad[-1].abs().max() == 0


def test_step_without_attn_returns_none():
    q, k, v, _ = _step_inputs(1, 3, 1, 16, 9, False)
    u, a = fused.slot_attention_step(q, k, v, scale=0.25)
    assert a is None
    close(u, slot_attention_step_ref(q.double(), k.double(), v.double(), scale=0.25)[0], "updates")


@pytest.mark.parametrize("n_split,block", [(1, 64), (3, 16)], ids=["one-program", "N-split-3-D-split"])
def test_launchers_with_logit_bias_and_splits(n_split, block):
    """The launchers' paths: N split across programs (fp32 partial sums), D split of the values,
    and the per-slot logit bias (the projected-key form), forward and backward. The reference
    appends the bias as an extra key channel: q·k + c = [q, c]·[k, 1]."""
    P, K, H, Dh, N = 2, 7, 2, 40, 37
    q, k, v, mask = _step_inputs(P, K, H, Dh, N, True)
    bias = torch.randn(P, H, K)
    scale = 40**-0.5
    cfg = {"BLOCK_N": 16, "BLOCK_DV": block, "BLOCK_DK": block}
    m8 = mask.view(torch.uint8)
    out, den, attn = ksa.slot_attention_fwd(
        q, k, v, m8, scale=scale, eps=1e-8, return_attn=True, config=cfg, n_split=n_split, bias=bias
    )
    du, da = torch.randn_like(out), torch.randn_like(attn)
    dq, dk, dv, dbias = ksa.slot_attention_bwd(
        q, k, v, m8, None, None, out, du, den, da, scale=scale, eps=1e-8, config=cfg, n_split=n_split, bias=bias
    )
    q_aug = torch.cat([q, bias.transpose(1, 2)[..., None]], dim=-1)  # [P, K, H, Dh + 1]
    k_aug = torch.cat([k, torch.ones(P, N, H, 1)], dim=-1)
    qd, kd, vd = (t.double().requires_grad_() for t in (q_aug, k_aug, v))
    ru, ra = slot_attention_step_ref(qd, kd, vd, mask, scale=scale, eps=1e-8, return_attn=True)
    ((ru * du.double()).sum() + (ra * da.double()).sum()).backward()
    close(out, ru, "updates")
    close(attn, ra, "attn")
    close(dq, qd.grad[..., :Dh], "dq")
    close(dbias, qd.grad[..., Dh].transpose(1, 2), "dbias")
    close(dk, kd.grad[..., :Dh], "dk")
    close(dv, vd.grad, "dv")


def test_projected_step_equals_step_on_projected_keys():
    """Folding W_k, W_v into the slots gives the step on k = x W_kᵀ + b_k, v = x W_vᵀ + b_v,
    padded with an all-padding row and packed with an empty sequence."""
    P, K, D, Din, N = 3, 5, 24, 20, 17
    q, x = torch.randn(P, K, D), torch.randn(P, N, Din)
    wk, bk, wv, bv = torch.randn(D, Din) / 5, torch.randn(D), torch.randn(D, Din) / 5, torch.randn(D)
    mask = torch.rand(P, N) > 0.3
    mask[1] = False
    leaves = [t.clone().requires_grad_() for t in (q, x, wk, bk, wv, bv)]
    u, a = fused.slot_attention_step_projected(*leaves[:2], *leaves[2:], mask, scale=D**-0.5, return_attn=True)
    g, ga = torch.randn_like(u), torch.randn_like(a)
    ((u * g).sum() + (a * ga).sum()).backward()
    ref = [t.double().requires_grad_() for t in (q, x, wk, bk, wv, bv)]
    rq, rx, rwk, rbk, rwv, rbv = ref
    kk = torch.nn.functional.linear(rx, rwk, rbk).unsqueeze(2)
    vv = torch.nn.functional.linear(rx, rwv, rbv).unsqueeze(2)
    ru, ra = slot_attention_step_ref(rq.unsqueeze(2), kk, vv, mask, scale=D**-0.5, return_attn=True)
    ((ru.squeeze(2) * g.double()).sum() + (ra * ga.double()).sum()).backward()
    close(u, ru.squeeze(2), "updates")
    close(a, ra, "attn")
    for name, got, want in zip(("dq", "dx", "dW_k", "db_k", "dW_v", "db_v"), leaves, ref):
        close(got.grad, want.grad, name)
    assert u[1].abs().max() == 0  # all padding: zero updates (no b_v either)
    # packed
    lengths = mask.sum(1).tolist()
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    up, _ = fused.slot_attention_step_projected(q, x[mask], wk, bk, wv, bv, None, cu, scale=D**-0.5)
    close(up, ru.squeeze(2), "updates (packed)")


def saturated_problem(P=2, K=5, N=24, D=16, device="cpu"):
    """q, x where slot 0 wins essentially one token (a single-token slot) and slot 2 loses every
    token (saturated softmax: den ~ N·(a + eps) ~ 1e-6), the cases where ``(dW − g)/den``
    amplifies rounding. Shared with the GPU test."""
    g = torch.Generator().manual_seed(0)
    e = torch.zeros(D)
    e[0] = 1.0
    x = torch.randn(P, N, D, generator=g) * 0.5 + 2.0 * e
    q = torch.randn(P, K, D, generator=g) * 0.3 + 2.0 * e
    q[:, 0] = (x[:, 3] - 2.0 * e) * 40.0 - 40.0 * e
    q[:, 2] = -40.0 * e
    return q.to(device), x.to(device)


def _projected_plain(q, x, **kw):
    """The folded step with identity projections: the plain step with keys = values = x."""
    D = x.shape[-1]
    eye, zero = torch.eye(D, dtype=x.dtype, device=x.device), torch.zeros(D, dtype=x.dtype, device=x.device)
    return fused.slot_attention_step_projected(q, x, eye, zero, eye, zero, scale=D**-0.5, **kw)[0]


def _ref_plain(q, x):
    xh = x.unsqueeze(2)
    return slot_attention_step_ref(q.unsqueeze(2), xh, xh, scale=x.shape[-1] ** -0.5)[0].squeeze(2)


def _grads(fn, q, x, g):
    q, x = q.clone().requires_grad_(), x.clone().requires_grad_()
    u = fn(q, x)
    (u * g.to(u.dtype)).sum().backward()
    return u.detach(), q.grad, x.grad


def test_single_token_and_saturated_slots_keep_torchs_error():
    """The correction term g is summed from the same dW values it is subtracted from, so the
    gradients of a single-token slot and of a slot that loses every token (den ~ 1e-6) stay at
    PyTorch's own fp32 error (fp64 as the truth)."""
    q, x = saturated_problem()
    g = torch.randn(q.shape)
    exact = _grads(_ref_plain, q.double(), x.double(), g.double())
    torch32 = _grads(_ref_plain, q, x, g)
    ours = _grads(_projected_plain, q, x, g)
    for name, a, t, e in zip(("updates", "dq", "dx"), ours, torch32, exact):
        err_ours, err_torch = (a.double() - e).abs().max().item(), (t.double() - e).abs().max().item()
        assert err_ours <= 2 * err_torch + 1e-7, f"{name}: ours {err_ours:.3e} vs torch fp32 {err_torch:.3e}"


@pytest.mark.parametrize("varlen", [False, True], ids=["padded-mask", "varlen"])
def test_fold_launchers_split_paths_agree(varlen):
    """The folded kernels' GPU paths — N split over programs (fp32 partials), D chunks of u', dq
    and dx, 16-token tiles — give the single-program interpreter path's numbers."""
    P, K, D, N = 3, 5, 40, 37
    if varlen:
        cu = torch.tensor([0, 30, 30, 67], dtype=torch.int32)
        x, mask, n = torch.randn(67, D), None, 37
    else:
        cu, x, n = None, torch.randn(P, N, D), N
        mask = torch.rand(P, N) > 0.3
        mask[1] = False
    qc = torch.randn(P, K, D + 1)
    kw = dict(scale=D**-0.5, eps=1e-8)
    runs = []
    for n_split, tiles in ((1, None), (3, (16, 16, 4))):
        out, den, attn = ksd.fold_fwd(qc, x, mask, cu, n, return_attn=True, n_split=n_split, tiles=tiles, **kw)
        g = torch.Generator().manual_seed(1)
        dout, dattn = torch.randn(out.shape, generator=g), torch.randn(attn.shape, generator=g)
        dqc, tok_s, tok_q = ksd.fold_bwd(qc, x, mask, cu, n, den, dout, dattn, n_split=n_split, tiles=tiles, **kw)
        dx = ksd.fold_dx(tok_s[None], tok_q[None], x, cu, n, tiles=tiles)
        runs.append((out, den, attn, dqc, dx))
    for name, a, b in zip(("out", "den", "attn", "dqc", "dx"), *runs):
        close(a, b, name)


def _pack(k, lengths):
    return torch.cat([k[i, :n] for i, n in enumerate(lengths)])


def test_varlen_step_equals_padded():
    lengths = [5, 0, 23]  # an empty sequence behaves like an all-padding row
    P, K, H, Dh, N = 3, 6, 2, 12, max(lengths)
    q, k, v, _ = _step_inputs(P, K, H, Dh, N, False)
    mask = torch.arange(N)[None, :] < torch.tensor(lengths)[:, None]
    cu = torch.tensor([0, 5, 5, 28], dtype=torch.int32)
    kp, vp = (_pack(t, lengths).requires_grad_() for t in (k, v))
    qs = q.clone().requires_grad_()
    u, a = fused.slot_attention_step_varlen(qs, kp, vp, cu, scale=0.3, return_attn=True)
    assert a.shape == (H, K, 28)
    du = torch.randn_like(u)
    da_pad = torch.randn(P, H, K, N) * mask[:, None, None, :]
    da = da_pad.permute(1, 2, 0, 3)[:, :, mask]  # [H, K, T], tokens in packed order
    ((u * du).sum() + (a * da).sum()).backward()
    ru, ra, rdq, rdk, rdv = _ref_step_grads(q, k, v, mask, 0.3, du, da_pad)
    close(u, ru, "updates")
    close(a, ra.permute(1, 2, 0, 3)[:, :, mask], "attn")
    close(qs.grad, rdq, "dq")
    close(kp.grad, _pack(rdk, lengths), "dk")
    close(vp.grad, _pack(rdv, lengths), "dv")
    assert u[1].abs().max() == 0


def test_gru_cell_matches_nn_grucell():
    M, D_in, D = 9, 12, 20
    cell = torch.nn.GRUCell(D_in, D)
    ref = torch.nn.GRUCell(D_in, D).double()
    ref.load_state_dict(cell.state_dict())
    x, h = torch.randn(M, D_in), torch.randn(M, D)
    xs, hs = x.clone().requires_grad_(), h.clone().requires_grad_()
    xd, hd = x.double().requires_grad_(), h.double().requires_grad_()
    out = fused.gru_cell(xs, hs, cell)
    want = ref(xd, hd)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (want * g.double()).sum().backward()
    close(out, want, "h'")
    close(xs.grad, xd.grad, "dx")
    close(hs.grad, hd.grad, "dh")
    for (name, p), (_, pr) in zip(cell.named_parameters(), ref.named_parameters()):
        close(p.grad, pr.grad, name)


# ---------------------------------------------------------------------------- module level
def _fixed_noise(module, noise):
    """Make the gaussian init use a fixed noise tensor so fp32 and fp64 runs see the same slots."""

    def initial_slots(batch, num_slots, *, device, dtype, deterministic=False):
        if module.init == "learned":
            return module.slots_init.to(dtype).unsqueeze(0).expand(batch, -1, -1)
        sigma = module.slots_logsigma.exp()
        return module.slots_mu + sigma * noise[:batch, :num_slots, : module.dim].to(dtype)

    module.initial_slots = initial_slots


def _pair(make, noise_shape):
    fast = make(backend="triton")
    ref = make(backend="torch")
    ref.load_state_dict(fast.state_dict())
    ref.double()
    noise = torch.randn(noise_shape)
    _fixed_noise(fast, noise)
    _fixed_noise(ref, noise)
    return fast, ref


MODULE_CASES = [
    pytest.param(lambda **kw: SlotAttention(7, 40, iters=2, hidden_dim=48, **kw), 37, True, id="odd-K7-D40-N37-mask"),
    pytest.param(lambda **kw: MultiHeadSlotAttention(5, 24, heads=2, dim_head=12, iters=2, **kw), 19, False, id="multihead"),
    pytest.param(lambda **kw: SlotAttention(4, 16, iters=3, init="learned", **kw), 21, True, id="learned-init-3-iters"),
    pytest.param(lambda **kw: SlotAttention(4, 16, iters=3, implicit_grad=True, **kw), 21, False, id="implicit-grad"),
    pytest.param(lambda **kw: _unfolded(SlotAttention(5, 24, iters=2, **kw)), 19, True, id="explicit-kv (unfolded)"),
    pytest.param(lambda **kw: SlotAttention(3, 12, iters=2, **kw), 1, False, id="N=1"),
]


def _unfolded(module):
    module.fold_projections = False
    return module


@pytest.mark.parametrize("make,N,masked", MODULE_CASES)
def test_module_matches_fp64_torch_backend(make, N, masked):
    B = 2
    fast, ref = _pair(make, (B, 8, 64))
    x = torch.randn(B, N, fast.dim)
    mask = None
    if masked:
        mask = torch.rand(B, N) > 0.3
        mask[-1] = False
    xs, xd = x.clone().requires_grad_(), x.double().requires_grad_()
    out, attn = fast(xs, mask=mask, return_attn=True)
    want, want_attn = ref(xd, mask=mask, return_attn=True)
    g, ga = torch.randn_like(out), torch.randn_like(attn)
    ((out * g).sum() + (attn * ga).sum()).backward()
    ((want * g.double()).sum() + (want_attn * ga.double()).sum()).backward()
    close(out, want, "slots")
    close(attn, want_attn, "attn")
    close(xs.grad, xd.grad, "d inputs")
    grads = 0
    for (name, p), (_, pr) in zip(fast.named_parameters(), ref.named_parameters()):
        assert (p.grad is None) == (pr.grad is None), name
        if p.grad is not None:
            close(p.grad, pr.grad, name)
            grads += 1
    # every parameter gets a gradient (implicit grad detaches the slots, hence not the init's)
    detached = {"slots_mu", "slots_logsigma"} if fast.implicit_grad else set()
    assert grads == sum(1 for name, _ in fast.named_parameters() if name not in detached)


@pytest.mark.parametrize("fold", [True, False], ids=["folded-projections", "explicit-kv"])
def test_forward_varlen_equals_padded_forward(fold):
    lengths = [9, 0, 14]
    fast, ref = _pair(lambda **kw: SlotAttention(5, 16, iters=2, **kw), (3, 5, 16))
    fast.fold_projections = fold
    x = torch.randn(sum(lengths), 16)
    cu = torch.tensor([0, 9, 9, 23], dtype=torch.int32)
    xs, xd = x.clone().requires_grad_(), x.double().requires_grad_()
    out, attn = fast.forward_varlen(xs, cu, return_attn=True)
    want, want_attn = ref.forward_varlen(xd, cu, return_attn=True)  # torch backend: padding + mask
    assert out.shape == (3, 5, 16) and attn.shape == (5, 23)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (want * g.double()).sum().backward()
    close(out, want, "slots")
    close(attn, want_attn, "attn")
    close(xs.grad, xd.grad, "d inputs")
    # and the torch backend's varlen is its padded forward
    padded = torch.zeros(3, 14, 16, dtype=torch.float64)
    mask = torch.arange(14)[None, :] < torch.tensor(lengths)[:, None]
    padded[mask] = x.double()
    close(ref(padded, mask=mask), want, "varlen == padded (torch)")


def test_triton_backend_really_launches_kernels(monkeypatch):
    fwd = LaunchCounter(monkeypatch, ksd._fold_fwd_kernel)
    scores = LaunchCounter(monkeypatch, ksd._fold_scores_bwd_kernel)
    dq = LaunchCounter(monkeypatch, ksd._fold_dq_bwd_kernel)
    dx = LaunchCounter(monkeypatch, ksd._fold_dx_kernel)
    gates = LaunchCounter(monkeypatch, kgru._gru_gates_fwd_kernel)
    model = SlotAttention(3, 16, iters=3, backend="triton")
    model.whole_iteration = False  # the folded per-iteration path (the whole-iteration one: test_slot_iterations.py)
    model(torch.randn(2, 10, 16)).sum().backward()
    # per iteration one forward and two backward kernels; the input gradient of all three
    # iterations is written by one final pass
    assert (fwd.n, scores.n, dq.n, dx.n) == (3, 3, 3, 1)
    assert gates.n == 3
    SlotAttention(3, 16, iters=3, backend="auto")(torch.randn(2, 10, 16))  # CPU + auto = reference
    SlotAttention(3, 16, iters=3, backend="torch")(torch.randn(2, 10, 16))
    assert (fwd.n, gates.n) == (3, 3)


@pytest.mark.parametrize("iters", [2, 4])
def test_implicit_grad_backward_cost_is_independent_of_iters(monkeypatch, iters):
    bwd = LaunchCounter(monkeypatch, ksd._fold_dq_bwd_kernel)
    dx = LaunchCounter(monkeypatch, ksd._fold_dx_kernel)
    gru_bwd = LaunchCounter(monkeypatch, kgru._gru_gates_bwd_kernel)
    model = SlotAttention(3, 16, iters=iters, implicit_grad=True, backend="triton")
    model.whole_iteration = False  # the folded path; the whole-iteration one: test_slot_iterations.py
    out = model(torch.randn(2, 10, 16))
    out.sum().backward()
    assert (bwd.n, dx.n, gru_bwd.n) == (1, 1, 1)  # only the last iteration is differentiated


def test_errors_name_the_argument(monkeypatch):
    q, k, v, _ = _step_inputs(1, 3, 1, 16, 9, False)
    with pytest.raises(ValueError, match="float64"):
        fused.slot_attention_step(q.double(), k.double(), v.double(), scale=1.0)
    with pytest.raises(ValueError, match="k must have shape"):
        fused.slot_attention_step(q, k[..., :8], v, scale=1.0)
    with pytest.raises(ValueError, match="mask"):
        fused.slot_attention_step(q, k, v, torch.ones(1, 9), scale=1.0)
    with pytest.raises(ValueError, match="cu_seqlens must have dtype torch.int32 or torch.int64"):
        fused.slot_attention_step_varlen(q, k[0], v[0], torch.tensor([0.0, 9.0]), scale=1.0)
    with pytest.raises(ValueError, match="cu_seqlens"):
        fused.slot_attention_step_varlen(q, k[0], v[0], torch.tensor([0, 7], dtype=torch.int32), scale=1.0)
    with pytest.raises(ValueError, match="cu_seqlens"):
        SlotAttention(3, 16, backend="triton").forward_varlen(torch.randn(9, 16), torch.tensor([0, 4], dtype=torch.int32))
    monkeypatch.setattr(fused, "_INTERPRETED", False)  # as if triton had been imported without it
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        fused.slot_attention_step(q, k, v, scale=1.0)


# ------------------------------------------------------------------ torch.library integration
def _opcheck(op, args):
    torch.library.opcheck(op, args)


def _fwd_op_args(form):
    q, k, v, mask = _step_inputs(2, 3, 2 if form == "varlen" else 1, 16, 9, form != "varlen")
    bias = torch.randn(2, 1, 3, requires_grad=True)
    if form == "padded-mask-bias-attn":
        return (q.requires_grad_(), k.requires_grad_(), v, mask, None, bias, 9, 0.25, 1e-8, True)
    if form == "varlen":
        cu = torch.tensor([0, 4, 9], dtype=torch.int32)
        return (q.requires_grad_(), k[0], v[0].requires_grad_(), None, cu, None, 5, 0.25, 1e-8, False)
    # the projected form: v=None (values = keys) and a per-slot logit bias
    return (q.requires_grad_(), k.requires_grad_(), None, mask, None, bias, 9, 0.25, 1e-8, False)


@pytest.mark.parametrize("form", ["padded-mask-bias-attn", "varlen", "shared-kv-bias"])
def test_opcheck_slot_attn_fwd(form):
    _opcheck(torch.ops.slotvlm.slot_attn_fwd.default, _fwd_op_args(form))


def test_opcheck_slot_attn_bwd():
    q, k, v, mask = _step_inputs(2, 3, 1, 16, 9, True)
    bias = torch.randn(2, 1, 3)
    out, den, _ = torch.ops.slotvlm.slot_attn_fwd(q, k, v, mask, None, bias, 9, 0.25, 1e-8, False)
    args = (q, k, v, mask, None, bias, 9, out, torch.randn_like(out), den, None, 0.25, 1e-8)
    _opcheck(torch.ops.slotvlm.slot_attn_bwd.default, args)


@pytest.mark.parametrize("form", ["padded-mask-attn", "varlen"])
def test_opcheck_fold_ops(form):
    """The folded step's ops (the input-gradient tokens op is left out: its outputs are
    uninitialised placeholders whose only role is to carry gradients)."""
    P, K, D = 2, 3, 16
    if form == "varlen":
        x, cu, mask, n = torch.randn(9, D), torch.tensor([0, 4, 9], dtype=torch.int32), None, 5
    else:
        x, cu, n = torch.randn(P, 9, D), None, 9
        mask = torch.rand(P, 9) > 0.3
    qc = torch.randn(P, K, D + 1, requires_grad=True)
    attn = form != "varlen"
    _opcheck(torch.ops.slotvlm.slot_attn_fold_fwd.default, (qc, x, None, None, mask, cu, n, 0.25, 1e-8, attn))
    out, den, a = torch.ops.slotvlm.slot_attn_fold_fwd(qc.detach(), x, None, None, mask, cu, n, 0.25, 1e-8, attn)
    dattn = torch.randn_like(a) if attn else None
    bwd_args = (qc.detach(), x, mask, cu, n, den, torch.randn_like(out), dattn, 0.25, 1e-8)
    _opcheck(torch.ops.slotvlm.slot_attn_fold_bwd.default, bwd_args)
    _, tok_s, tok_q = torch.ops.slotvlm.slot_attn_fold_bwd(*bwd_args)
    _opcheck(torch.ops.slotvlm.slot_attn_fold_dx.default, (tok_s[None], tok_q[None], x, cu, n))


def test_opcheck_gru_gates_and_bwd():
    gi, gh, h = torch.randn(5, 24), torch.randn(5, 24), torch.randn(5, 8)
    _opcheck(torch.ops.slotvlm.gru_gates.default, (gi.requires_grad_(), gh.requires_grad_(), h.requires_grad_()))
    _opcheck(torch.ops.slotvlm.gru_gates_bwd.default, (gi.detach(), gh.detach(), h.detach(), torch.randn(5, 8)))


def test_torch_compile_fullgraph_traces_the_triton_model():
    torch._dynamo.reset()
    model = SlotAttention(4, 16, iters=2, backend="triton", deterministic_init=True)
    ref = SlotAttention(4, 16, iters=2, backend="torch", deterministic_init=True)
    ref.load_state_dict(model.state_dict())
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 11, 16)
    xs, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = compiled(xs)
    out.sum().backward()
    want = ref(xr)
    want.sum().backward()
    torch.testing.assert_close(out, want, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(xs.grad, xr.grad, atol=ATOL, rtol=RTOL)


def test_kernels_compile_for_h100_without_a_gpu():
    """The interpreter accepts programs the GPU compiler rejects: lower every kernel for sm_90."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("aot_sm90.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode == 3:
        pytest.skip("this Triton build cannot target NVIDIA GPUs")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("compiled") == 12


def test_launch_plans_once_per_shape():
    """The folded path's launchers derive tiles, splits and grids once per shape (issue 25): a
    repeated fwd+bwd at a static shape adds no plan-cache miss, a new shape adds its own."""
    torch.manual_seed(0)
    m = SlotAttention(3, 16, backend="triton")
    m.whole_iteration = False  # the folded path's launchers
    x = torch.randn(2, 11, 16, requires_grad=True)
    plans = (ksd._fwd_plan, ksd._bwd_plan, ksd._dx_plan, kgru._plan)
    m(x).sum().backward()
    misses = [p.cache_info().misses for p in plans]
    m(x).sum().backward()
    assert [p.cache_info().misses for p in plans] == misses
    m(torch.randn(2, 13, 16, requires_grad=True)).sum().backward()
    assert [p.cache_info().misses for p in plans][:3] == [n + 1 for n in misses[:3]]
