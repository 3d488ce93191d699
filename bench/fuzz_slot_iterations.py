"""Fuzz the whole-iteration kernel against the PyTorch reference module (Triton interpreter, fp32).

    python bench/fuzz_slot_iterations.py                 # 200 random cases, seed 0 (a few minutes on CPU)
    python bench/fuzz_slot_iterations.py --cases 20 --seed 3

Each case draws B in 1..5, N in 1..300, D in 4..128, K in 1..16, the MLP hidden width, iters in
1..4, a padding mask (sometimes with an all-padding row), the init (gaussian, its mean, learned,
given slots) and the gradient mode: ``full`` (the unrolled backward) or ``implicit``
(``implicit_grad=True``: the last iteration only). Every case checks the no-grad forward (the
whole forward kernel, compared with ``backend="torch"``) and then, with a graph, the forward and
backward kernels (kernels/slot_iterations_bwd.py): output, input gradient, every parameter
gradient and the given slots' gradient compared, and the case fails if the backward kernel did
not run. Prints one line per failure and a summary (cases, worst errors), exit 1 if any case is
off by more than rtol 1e-4 / atol 1e-4.
"""
from __future__ import annotations

import argparse
import os
import random
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from slotvlm import SlotAttention  # noqa: E402
from slotvlm.kernels import slot_iterations_bwd as kb  # noqa: E402

RTOL = ATOL = 1e-4


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / (ATOL + RTOL |b|): <= 1 passes."""
    return float(((a - b).abs() / (ATOL + RTOL * b.abs())).max())


def one_case(rng: random.Random, index: int) -> dict:
    b, n, d, k = rng.randint(1, 5), rng.choice([1, 2, 7, 63, 64, 65, rng.randint(1, 300)]), rng.randint(4, 128), rng.randint(1, 16)
    hidden = rng.choice([d, 2 * d, rng.randint(1, 256)])
    iters = rng.randint(1, 4)
    init = rng.choice(["gaussian", "mean", "learned", "given"])
    mode = rng.choice(["full", "implicit"])
    masked = rng.random() < 0.5
    torch.manual_seed(index)
    kw = dict(iters=iters, hidden_dim=hidden, init="learned" if init == "learned" else "gaussian",
              implicit_grad=mode == "implicit")
    fused = SlotAttention(k, d, backend="triton", **kw)
    ref = SlotAttention(k, d, backend="torch", **kw)
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(b, n, d)
    mask = None
    if masked:
        mask = torch.rand(b, n) > rng.random()
        if rng.random() < 0.3:
            mask[0] = False
    call = dict(mask=mask, deterministic_init=init == "mean")
    if init == "given":
        call["slots"] = torch.randn(b, k, d)
    case = dict(index=index, B=b, N=n, D=d, K=k, hidden=hidden, iters=iters, init=init, mode=mode, masked=masked)
    with torch.no_grad():
        torch.manual_seed(10_000 + index)
        out = fused(x, **call)
        torch.manual_seed(10_000 + index)
        want = ref(x, **call)
    out_err = _err(out, want)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    given = call.pop("slots", None)
    sa = sb = None
    if given is not None:
        sa, sb = given.clone().requires_grad_(), given.clone().requires_grad_()
    ran = []
    real = kb.slot_iterations_bwd
    kb.slot_iterations_bwd = lambda *a, **kw: ran.append(kw["n_bwd"]) or real(*a, **kw)
    try:
        torch.manual_seed(10_000 + index)
        out = fused(xa, slots=sa, **call)
        torch.manual_seed(10_000 + index)
        want = ref(xb, slots=sb, **call)
        r = torch.randn_like(want)
        (out * r).sum().backward()
        (want * r).sum().backward()
    finally:
        kb.slot_iterations_bwd = real
    grads = [_err(xa.grad, xb.grad), 0.0 if ran == [1 if mode == "implicit" else iters] else float("inf")]
    if sa is not None and (sa.grad is None) != (sb.grad is None):
        grads.append(float("inf"))
    elif sa is not None and sb.grad is not None:
        grads.append(_err(sa.grad, sb.grad))
    for p, q in zip(fused.parameters(), ref.parameters()):
        if (p.grad is None) != (q.grad is None):
            grads.append(float("inf"))
        elif q.grad is not None:
            grads.append(_err(p.grad, q.grad))
    return {**case, "out": max(out_err, _err(out.detach(), want.detach())), "grad": max(grads)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=200, help="random cases (default 200)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the case generator (default 0)")
    args = ap.parse_args(argv)
    if args.cases < 1:
        raise SystemExit(f"error: --cases must be >= 1, got {args.cases}")
    from tqdm import tqdm

    rng = random.Random(args.seed)
    rows = [one_case(rng, i) for i in tqdm(range(args.cases), desc="fuzz", unit="case")]
    bad = [r for r in rows if r["out"] > 1 or r["grad"] > 1]
    for r in bad:
        print("FAIL", r)
    modes = {m: sum(r["mode"] == m for r in rows) for m in ("full", "implicit")}
    print(f"{len(rows)} cases (seed {args.seed}; forward no-grad and with a graph in each; gradients: "
          f"{modes['full']} full unrolled, {modes['implicit']} implicit-grad; "
          f"{sum(r['masked'] for r in rows)} masked; D {min(r['D'] for r in rows)}-{max(r['D'] for r in rows)}, "
          f"N {min(r['N'] for r in rows)}-{max(r['N'] for r in rows)}, K {min(r['K'] for r in rows)}-{max(r['K'] for r in rows)}): "
          f"{len(bad)} failed; worst output error {max(r['out'] for r in rows):.3f}, worst gradient error "
          f"{max(r['grad'] for r in rows):.3f} (in units of atol {ATOL:g} + rtol {RTOL:g}·|ref|; <= 1 passes)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
