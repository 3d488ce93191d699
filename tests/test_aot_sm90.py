"""sm_90 resources of every tile the launchers can choose (tests/aot_sm90.py --tiles): no register
spills, and the occupancy arithmetic the report prints. Compiles with Triton's real NVIDIA pipeline,
no GPU needed (about a minute on an idle 2-core machine with 2 compile processes)."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("aot_sm90.py")

# A spill in any selectable tile fails the test. Tiles that spill at sm_90 and are still selectable:
# none. Every tile the launchers can choose was
# picked from `python tests/aot_sm90.py --tiles` so that it does not (the folded kernels' 32-token
# forward / scores tiles, the slot-attention forward's (32, 128, 4), the GRU's 1,024-element blocks).
KNOWN_SPILLS: set[str] = {
    # the whole-iteration kernel at D = 128 (issue 25): every weight tile of the iteration passes
    # through registers; 8 warps spill 56 B (4 warps: 624 B). Untuned: no GPU has timed it yet.
    "_slot_iterations_fwd video-objects bf16 K=11 D=128 H 256 N 64 w8",
    # its backward (kernels/slot_iterations_bwd.py, one program per batch element, the whole slot
    # side's recompute and gradient in registers): 2026-12-07, 8 warps, 255 registers, 312 B spilled
    # at object discovery (65 KB shared) and 3.5 KB at D = 128 (193 KB shared); untuned, no GPU has
    # timed it — splitting the slot side (weight tiles per GRU gate) is the next step if one shows it.
    "_slot_iterations_bwd object-discovery bf16 K=7 D=64 H 128 N 64 w8",
    "_slot_iterations_bwd video-objects bf16 K=11 D=128 H 256 N 64 w8",
}


def _aot():
    spec = importlib.util.spec_from_file_location("aot_sm90_mod", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    env_interp = os.environ.pop("TRITON_INTERPRET", None)  # the script refuses the interpreter
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:  # this Triton build has no NVIDIA backend
        pytest.skip(f"tests/aot_sm90.py cannot run here: {exc}")
    finally:
        if env_interp is not None:
            os.environ["TRITON_INTERPRET"] = env_interp
    return module


@pytest.mark.parametrize(
    "regs, smem, warps, ctas, limiter",
    [
        (250, 66 * 1024, 8, 1, "registers"),  # 250 regs -> 8192 per warp x 8 warps = the whole file
        (128, 0, 4, 4, "registers"),  # 4096 per warp x 4 = 16384 -> 4 CTAs
        (32, 100 * 1024, 4, 2, "shared memory"),  # 228 KB / (100 + 1) KB
        (16, 0, 1, 32, "CTA slots"),
        (24, 0, 16, 4, "threads"),  # 2048 threads / 512 (registers would allow 5)
    ],
)
def test_occupancy_arithmetic(regs, smem, warps, ctas, limiter):
    occ = _aot().occupancy(regs, smem, warps)
    assert occ["ctas"] == ctas
    assert occ["occupancy"] == pytest.approx(ctas * warps / 64)
    assert occ["limiter"] == limiter


def test_no_spills_in_selectable_tiles():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiles", "--jobs", str(min(4, os.cpu_count() or 1))],
        env=env, capture_output=True, text=True, timeout=900,
    )
    if proc.returncode == 3:
        pytest.skip("this Triton build cannot target NVIDIA GPUs")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("compiled ")]
    assert len(lines) == len(_aot().tile_cases()) and len(lines) > 10
    spills, regs = set(), []
    for line in lines:
        label, res = line[len("compiled "):].split(" | ")
        m = re.search(r"regs\s+(\d+)\s+spill\s+(\d+) B\s+smem\s+([\d.]+) KB\s+(\d+) CTA/SM\s+occupancy\s+([\d.]+)%", res)
        assert m, line
        regs.append(int(m.group(1)))
        assert 0 < int(m.group(1)) <= 255 and int(m.group(4)) >= 1, line
        if int(m.group(2)):
            spills.add(" ".join(label.split()))
    new, fixed = spills - KNOWN_SPILLS, KNOWN_SPILLS - spills
    assert not new, f"register spills in selectable tiles: {sorted(new)}"
    assert not fixed, f"no longer spilling (remove from KNOWN_SPILLS): {sorted(fixed)}"
