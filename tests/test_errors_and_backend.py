"""Every error path of the public SlotAttention API, and backend resolution."""
import pytest
import torch

from slotvlm import SlotAttention
from slotvlm.backend import resolve_backend


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_slots=0, dim=8), "num_slots must be a positive int, got 0"),
        (dict(num_slots=2.5, dim=8), "num_slots must be a positive int, got 2.5"),
        (dict(num_slots=2, dim=-1), "dim must be a positive int, got -1"),
        (dict(num_slots=2, dim=8, iters=0), "iters must be a positive int, got 0"),
        (dict(num_slots=2, dim=8, eps=-1.0), "eps must be a finite number >= 0, got -1.0"),
        (dict(num_slots=2, dim=8, hidden_dim=0), "hidden_dim must be a positive int, got 0"),
        (dict(num_slots=2, dim=10, heads=3), "dim=10 is not divisible by heads=3"),
        (dict(num_slots=2, dim=8, init="uniform"), "init must be one of 'gaussian', 'learned', got 'uniform'"),
        (dict(num_slots=2, dim=8, backend="cuda"), "backend must be one of 'auto', 'torch', 'triton', got 'cuda'"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        SlotAttention(**kwargs)


@pytest.fixture
def m():
    return SlotAttention(3, 8, backend="torch")


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda m: m(torch.randn(4, 8)), r"inputs must have 3 dimensions, got tensor of shape \(4, 8\)"),
        (lambda m: m(torch.randn(2, 4, 6)), r"inputs must have shape \[B, N, 8\] \(dim=8\), got tensor of shape \(2, 4, 6\)"),
        (lambda m: m(torch.ones(2, 4, 8, dtype=torch.long)), r"inputs must be a floating-point tensor, got .*torch.int64"),
        (lambda m: m([[1.0]]), "inputs must be a torch.Tensor, got list"),
        (lambda m: m(torch.randn(2, 0, 8)), r"inputs must have B >= 1 and N >= 1, got tensor of shape \(2, 0, 8\)"),
        (lambda m: m(torch.randn(2, 4, 8), num_slots=0), "num_slots must be a positive int, got 0"),
        (lambda m: m(torch.randn(2, 4, 8), mask=torch.ones(2, 5, dtype=torch.bool)), r"mask must have shape \[2, 4\]"),
        (lambda m: m(torch.randn(2, 4, 8), mask=torch.ones(2, 4)), "mask must have dtype torch.bool, got .*torch.float32"),
        (lambda m: m(torch.randn(2, 4, 8), slots=torch.randn(3, 3, 8)), r"slots must have shape \[2, \*, 8\]"),
    ],
)
def test_forward_errors(m, call, match):
    m(torch.randn(2, 4, 8), mask=torch.ones(2, 4, dtype=torch.bool))  # a checked call is remembered (issue 25)...
    with pytest.raises(ValueError, match=match):  # ...and a bad one still raises
        call(m)


def test_checks_run_once_per_call_signature(m, monkeypatch):
    """forward's argument checks and backend choice run once per (shapes, dtypes, devices, flags,
    settings, environment) and are skipped on a repeat; anything in that signature re-checks."""
    seen = []
    check = SlotAttention._check_forward
    monkeypatch.setattr(SlotAttention, "_check_forward", lambda self, *a: seen.append(1) or check(self, *a))
    x = torch.randn(2, 4, 8)
    for _ in range(3):
        m(x)
    assert len(seen) == 1
    m(torch.randn(2, 5, 8))
    m(x, num_slots=2)
    assert len(seen) == 3
    with pytest.raises(ValueError, match="num_slots must be a positive int, got True"):
        m(x, num_slots=True)  # not the cached num_slots=1 entry (True == 1)
    m.double()
    with pytest.raises(ValueError, match="inputs have dtype torch.float32 but the module's parameters are torch.float64"):
        m(x)
    m.float()
    m(x)
    monkeypatch.setenv("SLOTVLM_BACKEND", "fast")
    m.backend = None
    with pytest.raises(ValueError, match="environment variable SLOTVLM_BACKEND must be one of"):
        m(x)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    m.backend = "triton"
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        m(x)


def test_backend_env_var(monkeypatch):
    monkeypatch.setenv("SLOTVLM_BACKEND", "torch")
    assert resolve_backend(None, torch.device("cpu")) == "torch"
    monkeypatch.setenv("SLOTVLM_BACKEND", "fast")
    with pytest.raises(ValueError, match="environment variable SLOTVLM_BACKEND must be one of .* got 'fast'"):
        resolve_backend(None, torch.device("cpu"))
    monkeypatch.delenv("SLOTVLM_BACKEND")
    assert resolve_backend(None, torch.device("cpu")) == "torch"  # auto on CPU
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    # an explicit argument wins over the environment
    monkeypatch.setenv("SLOTVLM_BACKEND", "triton")
    assert resolve_backend("torch", torch.device("cpu")) == "torch"


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", torch.device("cpu"))
