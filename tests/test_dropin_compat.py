"""Drop-in compatibility with the `slot-attention` package (1.5.x): a state_dict it saved loads
strictly and gives the same outputs and input gradients."""
import pytest
import torch

import slotvlm

sa = pytest.importorskip("slot_attention", reason="the slot-attention package is a test extra")


def _roundtrip(tmp_path, theirs, ours_cls, **ours_kwargs):
    path = tmp_path / "theirs.pt"
    torch.save(theirs.state_dict(), path)
    ours = ours_cls(**ours_kwargs)
    ours.load_state_dict(torch.load(path), strict=True)
    return ours


@pytest.mark.parametrize(
    "pkg_cls,ours_cls,kwargs",
    [
        pytest.param("SlotAttention", slotvlm.SlotAttention, dict(num_slots=5, dim=32, iters=3, hidden_dim=64), id="single"),
        pytest.param("SlotAttention", slotvlm.SlotAttention, dict(num_slots=7, dim=40, iters=2, eps=1e-6), id="odd"),
        pytest.param(
            "MultiHeadSlotAttention",
            slotvlm.MultiHeadSlotAttention,
            dict(num_slots=4, dim=24, heads=3, dim_head=10, iters=3),
            id="multihead",
        ),
    ],
)
def test_state_dict_loads_and_matches(tmp_path, pkg_cls, ours_cls, kwargs):
    theirs = getattr(sa, pkg_cls)(**kwargs)
    ours = _roundtrip(tmp_path, theirs, ours_cls, **kwargs, backend="torch")
    # noise switched off: sigma = exp(logsigma) underflows to exactly 0 in both
    with torch.no_grad():
        theirs.slots_logsigma.fill_(-200.0)
        ours.slots_logsigma.fill_(-200.0)
    x1 = torch.randn(3, 29, kwargs["dim"], requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    out_theirs, out_ours = theirs(x1), ours(x2)
    torch.testing.assert_close(out_ours, out_theirs, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out_ours)
    (gt,) = torch.autograd.grad(out_theirs, x1, g)
    (go,) = torch.autograd.grad(out_ours, x2, g)
    torch.testing.assert_close(go, gt, rtol=1e-4, atol=1e-5)
    # and with noise on, the same seed gives the same samples and outputs
    with torch.no_grad():
        theirs.slots_logsigma.fill_(-1.0)
        ours.slots_logsigma.fill_(-1.0)
    torch.manual_seed(7)
    a = theirs(x1)
    torch.manual_seed(7)
    b = ours(x1)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_our_state_dict_loads_into_theirs():
    ours = slotvlm.SlotAttention(4, 16)
    theirs = sa.SlotAttention(4, 16)
    theirs.load_state_dict(ours.state_dict(), strict=True)
