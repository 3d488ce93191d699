"""bench/traffic.py: the byte/FLOP/launch counter against hand-computed numbers, the Triton launch
recorder (recorded, never executed; the kernel's TRAFFIC formula used when it has one), custom ops
counted through their real implementation, the launch/byte budgets, and a reduced run of the script."""
from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import FakeTensorMode

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def traffic():
    return _load("traffic")


def _count(traffic, fn, namespace="slotvlm"):
    mode = traffic.CountingMode(namespace)
    with traffic.recording_triton(mode), mode:
        fn()
    return mode.count


def test_matmul_bytes_and_flops_by_hand(traffic):
    m, k, n = 96, 40, 24
    with FakeTensorMode():
        a = torch.randn(m, k, dtype=torch.bfloat16)
        b = torch.randn(k, n, dtype=torch.bfloat16)
        c = _count(traffic, lambda: a @ b)
    assert c.n == 1 and c.launches[0].name == "aten::mm"
    assert c.bytes == 2 * (m * k + k * n + m * n)
    assert c.flops == 2 * m * n * k


def test_linear_with_bias_and_views_are_free(traffic):
    batch, tokens, d_in, d_out = 3, 5, 16, 8
    with FakeTensorMode():
        x = torch.randn(batch, tokens, d_in)
        w, bias = torch.randn(d_out, d_in), torch.randn(d_out)
        c = _count(traffic, lambda: torch.nn.functional.linear(x, w, bias).transpose(0, 1).reshape(-1))
    gemms = [x for x in c.launches if x.flops]
    assert len(gemms) == 1 and gemms[0].flops == 2 * batch * tokens * d_in * d_out
    # x, w and the bias read once (the bias broadcast over rows counts its 8 values), out written once
    assert gemms[0].bytes_read == 4 * (batch * tokens * d_in + d_out * d_in + d_out)
    assert gemms[0].bytes_written == 4 * batch * tokens * d_out
    # transpose is a view; reshape of the non-contiguous result is one copy kernel
    assert [x.name for x in c.launches if not x.flops] == ["aten::clone"]


def test_layernorm_bytes_by_hand(traffic):
    rows, d = 10, 12
    with FakeTensorMode():
        x = torch.randn(rows, d)
        ln = torch.nn.LayerNorm(d)
        ln.weight = torch.nn.Parameter(torch.randn(d))
        ln.bias = torch.nn.Parameter(torch.randn(d))
        c = _count(traffic, lambda: torch.nn.functional.layer_norm(x, (d,), ln.weight, ln.bias))
    assert [x.name for x in c.launches] == ["aten::native_layer_norm"]
    # reads x, weight, bias; writes y and the per-row fp32 mean and rstd
    assert c.bytes == 4 * (rows * d + 2 * d) + 4 * (rows * d + 2 * rows)
    assert c.flops == 0


def test_in_place_and_copy(traffic):
    with FakeTensorMode():
        a, b = torch.randn(7, 9), torch.randn(7, 9, dtype=torch.float16)
        c = _count(traffic, lambda: (a.add_(1.0), a.copy_(b)))
    add, copy = c.launches
    assert (add.bytes_read, add.bytes_written) == (4 * 63, 4 * 63)
    assert (copy.bytes_read, copy.bytes_written) == (2 * 63, 4 * 63)  # copy_ does not read its destination


@triton.jit
def _copy_kernel(x, y, n, BLOCK: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y + o, tl.load(x + o, mask=o < n) * 2, mask=o < n)


@triton.jit
def _traffic_kernel(x, y, n, BLOCK: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y + o, tl.load(x + o, mask=o < n), mask=o < n)


TRAFFIC = {"_traffic_kernel": lambda grid, args: (111 * grid[0], 222, args["BLOCK"])}


@torch.library.custom_op("slotvlm_traffic_test::double", mutates_args=())
def _double(x: torch.Tensor) -> torch.Tensor:
    y = torch.empty_like(x)
    _copy_kernel[(triton.cdiv(x.numel(), 64),)](x, y, x.numel(), BLOCK=64)
    return y


@_double.register_fake
def _(x):
    return torch.empty_like(x)


def test_triton_launch_recorded_not_run_and_default_bytes(traffic):
    with FakeTensorMode():
        x = torch.randn(1000, dtype=torch.bfloat16)
        y = torch.empty_like(x)
        c = _count(traffic, lambda: _copy_kernel[(16,)](x, y, 1000, BLOCK=64))
    (launch,) = c.launches
    assert launch.kind == "triton" and launch.name == "_copy_kernel" and launch.source == "default"
    assert (launch.bytes_read, launch.bytes_written, launch.flops) == (2000, 2000, 0)
    # outside a counting region the kernel really runs (the recorder was removed)
    xr = torch.arange(8.0)
    yr = torch.empty_like(xr)
    _copy_kernel[(1,)](xr, yr, 8, BLOCK=64)
    torch.testing.assert_close(yr, 2 * xr)


def test_kernel_traffic_formula_wins(traffic):
    with FakeTensorMode():
        x = torch.randn(300)
        y = torch.empty_like(x)
        c = _count(traffic, lambda: _traffic_kernel[lambda meta: (triton.cdiv(300, meta["BLOCK"]),)](x, y, 300, BLOCK=128))
    (launch,) = c.launches
    assert launch.source == "kernel TRAFFIC"
    assert (launch.bytes_read, launch.bytes_written, launch.flops) == (111 * 3, 222, 128)


def test_custom_op_counted_through_its_implementation(traffic):
    with FakeTensorMode():
        x = torch.randn(256)
        c = _count(traffic, lambda: torch.ops.slotvlm_traffic_test.double(x) + 1, namespace="slotvlm_traffic_test")
    assert c.custom_ops == 1
    assert [x.name for x in c.launches] == ["_copy_kernel", "aten::add"]
    assert c.launches[0].in_custom_op and not c.launches[1].in_custom_op
    # host model: one custom op + one aten op
    host_us = traffic.MODEL["host_custom_op_us"] + traffic.MODEL["host_aten_op_us"]
    assert c.host_s() == pytest.approx(host_us * 1e-6)


def test_roofline_time_of_one_kernel(traffic):
    launch = traffic.Launch("aten", "aten::mm", 3_350_000_000, 0, 10**12, traffic.MODEL["gemm_bf16_flops"], False)
    hbm = traffic.DEVICES["H100"]
    t_mem = 3.35e9 / (hbm * traffic.MODEL["hbm_efficiency"])
    t_math = 1e12 / traffic.MODEL["gemm_bf16_flops"]
    assert launch.device_s(hbm) == pytest.approx(max(t_mem, t_math) + traffic.MODEL["min_kernel_us"] * 1e-6)


def test_full_size_module_counts_match_the_reference_structure(traffic):
    """The eager reference at vlm-slow: 3 iterations, the GEMM FLOPs of bench/slot_attn.py's formula."""
    sa = _load("slot_attn")
    shape = sa.GPU_SHAPES["vlm-slow"]
    c = traffic.count_case(shape, "eager", "fwd", "bf16")
    assert c.flops == pytest.approx(sa.flops(shape, "fwd"), rel=0.02)
    assert c.custom_ops == 0 and all(x.kind == "aten" for x in c.launches)
    ours = traffic.count_case(shape, "slotvlm", "fwd", "bf16")
    names = [x.name for x in ours.launches if x.kind == "triton"]
    assert ours.custom_ops >= 3 and len(names) >= 3  # at least one Triton kernel per iteration


def _budget_cases():
    budgets = _load("traffic").load_budgets()
    return sorted(set(budgets["launches"]) | set(budgets["gbytes"]))


@pytest.mark.parametrize("key", _budget_cases())
def test_launch_and_byte_budgets(traffic, key):
    """Launches and bytes per slotvlm module call stay within bench/budgets.json (full sizes)."""
    shape, mode, dtype = key.split("/")
    traffic.check_budget(shape, mode, dtype)


def test_budget_check_fails_above_the_budget(traffic):
    count = traffic.count_case(_load("slot_attn").GPU_SHAPES["object-discovery"], "slotvlm", "fwd", "bf16")
    tight = {"launches": {"object-discovery/fwd/bf16": count.n - 1}}
    with pytest.raises(AssertionError, match="kernel launches per module call"):
        traffic.check_budget("object-discovery", "fwd", "bf16", budgets=tight)


def test_script_reduced_run_prints_table_and_writes_model_rows(traffic, tmp_path, capsys):
    out = tmp_path / "model.csv"
    argv = ["--small", "--shapes", "object-discovery", "--modes", "fwd", "fwd+bwd", "--dtypes", "bf16", "--csv", str(out)]
    assert traffic.main(argv) == 0
    text = capsys.readouterr().out
    assert "MODEL, NOT A MEASUREMENT" in text and "3.35 TB/s" in text and "4.80 TB/s" in text
    assert "compile: torch.compile is not counted" in text
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == traffic.COLUMNS
    assert {r["device"] for r in rows} == {"H100 (model)", "H200 (model)"}
    assert {r["provider"] for r in rows} == {"slotvlm", "eager", "slot-attention"}
    assert all(r["model"] == traffic.MODEL["name"] and int(r["launches"]) > 0 and float(r["ms"]) > 0 for r in rows)
    eager = [r for r in rows if r["provider"] == "eager"]
    assert all(float(r["x_eager"]) == 1.0 for r in eager)


def test_default_output_is_outside_the_checkout(traffic, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLOTVLM_BENCH_DIR", str(tmp_path))
    argv = ["--small", "--shapes", "object-discovery", "--modes", "step-fwd", "--providers", "eager", "--dtypes", "bf16"]
    assert traffic.main(argv) == 0
    assert (tmp_path / "traffic-model.csv").exists()
    assert str(tmp_path) in capsys.readouterr().out
