"""SlotSSM: shapes, causality in time, the Triton backend (interpreter) against the PyTorch one
(outputs and all gradients), streaming against the full sequence, argument errors."""
import pytest
import torch

from slotvlm import SlotSSM
from slotvlm.nn.slot_ssm import SlotSSMState

SMALL = dict(state_dim=4, expand=1, ffn_mult=2)


def make(backend="torch", dim=16, num_slots=3, num_layers=2, **kw):
    torch.manual_seed(0)
    return SlotSSM(dim, num_slots, num_layers, backend=backend, **{**SMALL, **kw})


def test_output_shape_and_public_name():
    import slotvlm

    assert slotvlm.SlotSSM is SlotSSM
    model = make(dim=16, num_slots=5, num_layers=3)
    out = model(torch.randn(2, 7, 11, 16))
    assert out.shape == (2, 7, 5, 16)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("recurrent", [True, False], ids=["recurrent-encoder", "parallel-encoder"])
def test_causal_in_time(recurrent):
    model = make(recurrent_encoder=recurrent)
    x = torch.randn(2, 8, 6, 16)
    out = model(x)
    for t in (1, 5):
        x2 = x.clone()
        x2[:, t:] = torch.randn_like(x2[:, t:]) * 3
        out2 = model(x2)
        torch.testing.assert_close(out2[:, :t], out[:, :t], atol=0, rtol=0)
        assert (out2[:, t] - out[:, t]).abs().max() > 1e-3  # the change does reach frame t


def test_slots_interact_only_within_frames_through_the_mixer():
    """Without the mixer, slot k of frame t depends on other slots only through the encoder: zeroing
    the mixer's output projection must change the result (the mixer is live)."""
    model = make()
    x = torch.randn(1, 4, 6, 16)
    out = model(x)
    for layer in model.layers:
        torch.nn.init.zeros_(layer.mix_out.weight)
        torch.nn.init.zeros_(layer.mix_out.bias)
    assert (model(x) - out).abs().max() > 1e-4


@pytest.mark.parametrize("recurrent", [True, False], ids=["recurrent-encoder", "parallel-encoder"])
def test_triton_backend_matches_torch_with_gradients(recurrent, monkeypatch):
    import slotvlm.kernels.selective_scan as ks

    launches = {"fwd": 0, "bwd": 0}
    for name in launches:
        real = getattr(ks, f"selective_scan_{name}")

        def spy(*a, _real=real, _name=name):
            launches[_name] += 1
            return _real(*a)

        monkeypatch.setattr(ks, f"selective_scan_{name}", spy)
    import slotvlm.kernels.slot_attention_deferred as ksd
    from triton_spy import LaunchCounter

    # the encoder's slot attention must run the fused Triton step kernels too (the kernels issue;
    # a one-head SlotAttention runs the folded-projection kernels)
    monkeypatch.setenv("SLOTVLM_WHOLE_ITERATION", "0")  # the folded step kernels (the whole-iteration path has its own tests)
    step_fwd = LaunchCounter(monkeypatch, ksd._fold_fwd_kernel)
    step_bwd = LaunchCounter(monkeypatch, ksd._fold_dq_bwd_kernel)
    ref = make(recurrent_encoder=recurrent)
    fused = make("triton", recurrent_encoder=recurrent)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 4, 16)
    gout = torch.randn(2, 5, 3, 16)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    outs = []
    for model, xi in zip((ref, fused), xs):
        out = model(xi)
        (out * gout).sum().backward()
        outs.append(out.detach())
    assert launches == {"fwd": 2, "bwd": 2}  # one scan per layer, really through the kernels
    assert step_fwd.n > 0 and step_bwd.n > 0
    torch.testing.assert_close(outs[1], outs[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(xs[1].grad, xs[0].grad, atol=1e-4, rtol=1e-4)
    named = dict(fused.named_parameters())
    for name, p in ref.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(named[name].grad, p.grad, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_streaming_equals_full_sequence(backend):
    model = make(backend)
    x = torch.randn(2, 4, 5, 16)
    full = model(x)
    state = model.init_state(2)
    steps = []
    for t in range(x.shape[1]):
        s_t, state = model.step(x[:, t], state)
        steps.append(s_t)
    assert state.steps == 4
    torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    # a sequence split in two calls, the second continuing from the first's state
    first, st = model(x[:, :3], return_state=True)
    second = model(x[:, 3:], st)
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, atol=1e-5, rtol=1e-5)


def test_step_without_state_starts_from_init_state():
    model = make()
    x_t = torch.randn(3, 5, 16)
    a, _ = model.step(x_t)
    b, _ = model.step(x_t, model.init_state(3))
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_ffn_can_be_disabled():
    model = make(ffn_mult=0)
    assert all(layer.ffn is None for layer in model.layers)
    assert model(torch.randn(1, 3, 4, 16)).shape == (1, 3, 3, 16)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dim=0), "dim must be a positive int"),
        (dict(num_slots=-1), "num_slots must be a positive int"),
        (dict(num_layers=0), "num_layers must be a positive int"),
        (dict(state_dim=0), "state_dim must be a positive int"),
        (dict(dim=18, mixer_heads=4), "mixer_heads=4"),
        (dict(ffn_mult=-1), "ffn_mult"),
        (dict(dt_min=0.5, dt_max=0.1), "dt_min"),
        (dict(backend="gpu"), "backend"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_bad_inputs_and_state():
    model = make()
    with pytest.raises(ValueError, match=r"x must have 4 dimensions"):
        model(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match=r"x must have shape \[B, T, N, 16\]"):
        model(torch.randn(2, 3, 5, 8))
    with pytest.raises(ValueError, match="x must have B, T, N >= 1"):
        model(torch.randn(2, 0, 5, 16))
    with pytest.raises(ValueError, match="state must be a SlotSSMState"):
        model.step(torch.randn(2, 5, 16), {"slots": []})
    with pytest.raises(ValueError, match=r"state.slots\[0\] must have shape"):
        model.step(torch.randn(2, 5, 16), model.init_state(3))
    bad = model.init_state(2)
    with pytest.raises(ValueError, match="num_layers=2"):
        model.step(torch.randn(2, 5, 16), SlotSSMState(slots=bad.slots[:1], ssm=bad.ssm[:1]))
