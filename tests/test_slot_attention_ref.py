"""The reference SlotAttention (backend="torch") against an independent, step-by-step
implementation of Algorithm 1 as written in DESIGN.md, plus gradcheck, masks, init modes and
implicit differentiation."""
import math

import pytest
import torch
import torch.nn.functional as F

from slotvlm import MultiHeadSlotAttention, SlotAttention


def layer_norm(x, ln):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def gru(x, h, cell):
    """GRUCell written from the equations in DESIGN.md."""
    w_ir, w_iz, w_in = cell.weight_ih.chunk(3)
    w_hr, w_hz, w_hn = cell.weight_hh.chunk(3)
    b_ir, b_iz, b_in = cell.bias_ih.chunk(3)
    b_hr, b_hz, b_hn = cell.bias_hh.chunk(3)
    r = torch.sigmoid(x @ w_ir.T + b_ir + h @ w_hr.T + b_hr)
    z = torch.sigmoid(x @ w_iz.T + b_iz + h @ w_hz.T + b_hz)
    n = torch.tanh(x @ w_in.T + b_in + r * (h @ w_hn.T + b_hn))
    return (1 - z) * n + z * h


def algorithm1(m, inputs, slots0, mask=None):
    """Locatello et al. Algorithm 1, one batch element and one head at a time, with loops."""
    out = []
    for b in range(inputs.shape[0]):
        x = layer_norm(inputs[b], m.norm_input)
        k, v = x @ m.to_k.weight.T + m.to_k.bias, x @ m.to_v.weight.T + m.to_v.bias
        slots = slots0[b]
        for _ in range(m.iters):
            prev = slots
            q = layer_norm(slots, m.norm_slots) @ m.to_q.weight.T + m.to_q.bias
            heads = []
            for h in range(m.heads):
                sl = slice(h * m.dim_head, (h + 1) * m.dim_head)
                logits = q[:, sl] @ k[:, sl].T * m.dim_head**-0.5  # [K, N]
                attn = torch.exp(logits - logits.max(0).values) / torch.exp(logits - logits.max(0).values).sum(0)
                attn = attn + m.eps
                if mask is not None:
                    attn = attn * mask[b].to(attn.dtype)
                attn = attn / attn.sum(1, keepdim=True)
                heads.append(attn @ v[:, sl])
            upd = torch.cat(heads, dim=1)
            if m.combine_heads is not None:
                upd = upd @ m.combine_heads.weight.T + m.combine_heads.bias
            slots = gru(upd, prev, m.gru)
            hidden = F.relu(layer_norm(slots, m.norm_pre_ff) @ m.mlp[0].weight.T + m.mlp[0].bias)
            slots = slots + hidden @ m.mlp[2].weight.T + m.mlp[2].bias
        out.append(slots)
    return torch.stack(out)


CASES = [
    pytest.param(dict(num_slots=4, dim=16), 10, id="K4-D16-N10"),
    pytest.param(dict(num_slots=7, dim=40, hidden_dim=24), 37, id="K7-D40-N37-odd"),
    pytest.param(dict(num_slots=3, dim=24, heads=3), 19, id="heads3"),
    pytest.param(dict(num_slots=5, dim=20, iters=1), 8, id="iters1"),
]


@pytest.mark.parametrize("kwargs,n", CASES)
@pytest.mark.parametrize("with_mask", [False, True], ids=["nomask", "mask"])
def test_matches_algorithm1(kwargs, n, with_mask):
    m = SlotAttention(**kwargs, backend="torch").double()
    x = torch.randn(3, n, m.dim, dtype=torch.float64)
    slots0 = torch.randn(3, m.num_slots, m.dim, dtype=torch.float64)
    mask = None
    if with_mask:
        mask = torch.rand(3, n) > 0.3
        mask[:, 0] = True
    got = m(x, slots=slots0, mask=mask)
    want = algorithm1(m, x, slots0, mask)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_gaussian_init_and_deterministic_switch():
    m = SlotAttention(4, 8, backend="torch")
    x = torch.randn(2, 5, 8)
    a = m(x, deterministic_init=True)
    b = m(x, deterministic_init=True)
    assert torch.equal(a, b)
    want = m(x, slots=m.slots_mu.expand(2, 4, 8).clone())
    torch.testing.assert_close(a, want, rtol=0, atol=0)
    torch.manual_seed(1)
    c = m(x)
    torch.manual_seed(2)
    d = m(x)
    assert not torch.allclose(c, d), "gaussian init must sample noise by default"
    m.deterministic_init = True
    assert torch.equal(m(x), a)


def test_noise_scale_follows_logsigma():
    m = SlotAttention(4, 8, backend="torch")
    torch.manual_seed(3)
    s = m.initial_slots(2, 4, device="cpu", dtype=torch.float32)
    torch.manual_seed(3)
    noise = torch.randn(2, 4, 8)
    torch.testing.assert_close(s, m.slots_mu + m.slots_logsigma.exp() * noise)


def test_learned_init():
    m = SlotAttention(6, 12, init="learned", backend="torch")
    assert not hasattr(m, "slots_mu") and m.slots_init.shape == (6, 12)
    x = torch.randn(2, 9, 12)
    out = m(x)
    torch.testing.assert_close(out, m(x, slots=m.slots_init.expand(2, -1, -1)), rtol=0, atol=0)
    out.sum().backward()
    assert m.slots_init.grad is not None and m.slots_init.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="num_slots=3"):
        m(x, num_slots=3)


@pytest.mark.parametrize("heads", [1, 2])
def test_gradcheck_float64(heads):
    m = SlotAttention(3, 8, iters=2, hidden_dim=8, heads=heads, backend="torch").double()
    mask = torch.tensor([[True] * 5 + [False] * 2, [True] * 7])
    x = torch.randn(2, 7, 8, dtype=torch.float64, requires_grad=True)
    s0 = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, s0: m(x, slots=s0, mask=mask), (x, s0))
    # and through a parameter: the gaussian mean and the key projection
    mu = m.slots_mu.detach().clone().requires_grad_(True)
    wk = m.to_k.weight.detach().clone().requires_grad_(True)

    def through_params(mu, wk):
        params = {"slots_mu": mu, "to_k.weight": wk}
        return torch.func.functional_call(m, params, (x.detach(),), {"deterministic_init": True})

    assert torch.autograd.gradcheck(through_params, (mu, wk))


def test_padding_equals_unpadded():
    m = SlotAttention(5, 16, backend="torch").double()
    lengths = [9, 4, 13]
    rows = [torch.randn(n, 16, dtype=torch.float64) for n in lengths]
    padded = torch.zeros(3, 13, 16, dtype=torch.float64)
    mask = torch.zeros(3, 13, dtype=torch.bool)
    for i, r in enumerate(rows):
        padded[i, : len(r)] = r
        padded[i, len(r) :] = 1e3 * torch.randn(13 - len(r), 16)  # garbage must not leak in
        mask[i, : len(r)] = True
    s0 = torch.randn(3, 5, 16, dtype=torch.float64)
    out, attn = m(padded, slots=s0, mask=mask, return_attn=True)
    for i, r in enumerate(rows):
        alone, attn_alone = m(r[None], slots=s0[i : i + 1], return_attn=True)
        torch.testing.assert_close(out[i : i + 1], alone, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(attn[i, :, : len(r)], attn_alone[0], rtol=1e-12, atol=1e-12)
        assert torch.all(attn[i, :, len(r) :] == 0)


def test_all_padding_row_is_defined():
    m = SlotAttention(4, 8, backend="torch")
    x = torch.randn(2, 6, 8)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1] = False
    s0 = torch.randn(2, 4, 8)
    out, attn = m(x, slots=s0, mask=mask, return_attn=True)
    assert torch.isfinite(out).all() and torch.all(attn[1] == 0)
    # documented behaviour: zero updates, so the slots only pass through the GRU and the MLP
    h = s0[1]
    for _ in range(m.iters):
        h = m.gru(torch.zeros_like(h), h)
        h = h + m.mlp(m.norm_pre_ff(h))
    torch.testing.assert_close(out[1], h)


def test_attention_map_is_softmax_over_slots():
    m = SlotAttention(5, 8, heads=2, backend="torch")
    x = torch.randn(2, 11, 8)
    slots, attn = m(x, return_attn=True)
    assert slots.shape == (2, 5, 8) and attn.shape == (2, 5, 11)
    torch.testing.assert_close(attn.sum(1), torch.ones(2, 11))


def test_num_slots_override():
    m = SlotAttention(4, 8, backend="torch")
    assert m(torch.randn(2, 6, 8), num_slots=9).shape == (2, 9, 8)


def test_implicit_grad_same_forward_and_truncated_backward():
    torch.manual_seed(0)
    plain = SlotAttention(4, 8, iters=4, backend="torch").double()
    implicit = SlotAttention(4, 8, iters=4, implicit_grad=True, backend="torch").double()
    implicit.load_state_dict(plain.state_dict())
    x = torch.randn(2, 10, 8, dtype=torch.float64, requires_grad=True)
    s0 = torch.randn(2, 4, 8, dtype=torch.float64)
    out = implicit(x, slots=s0)
    torch.testing.assert_close(out, plain(x, slots=s0))
    (g_implicit,) = torch.autograd.grad(out.square().sum(), x)
    # gradient of one iteration started from the detached result of the first iters - 1
    plain.iters = 3
    with torch.no_grad():
        start = plain(x, slots=s0)
    plain.iters = 1
    (g_last,) = torch.autograd.grad(plain(x, slots=start).square().sum(), x)
    torch.testing.assert_close(g_implicit, g_last)
    # backward cost does not grow with iters: the graph holds one iteration whatever iters is
    implicit.iters = 12
    out12 = implicit(x, slots=s0)
    nodes = count_graph_nodes(out12.grad_fn)
    implicit.iters = 2
    assert count_graph_nodes(implicit(x, slots=s0).grad_fn) == nodes


def count_graph_nodes(fn, seen=None):
    seen = set() if seen is None else seen
    if fn is None or fn in seen:
        return 0
    seen.add(fn)
    return 1 + sum(count_graph_nodes(n, seen) for n, _ in fn.next_functions)


def test_multihead_class_layout():
    m = MultiHeadSlotAttention(3, 20, heads=4, dim_head=6)
    assert m.to_q.out_features == 24 and m.combine_heads.in_features == 24
    assert math.isclose(m.scale, 6**-0.5)
    assert m(torch.randn(1, 5, 20)).shape == (1, 3, 20)
