"""Autograd for the whole-iteration kernels: forward ``kernels/slot_iterations.py`` (all iterations,
one launch, per-iteration slots saved), backward ``kernels/slot_iterations_bwd.py`` (all
differentiated iterations, one launch, plus one reduction of the weight-gradient rows and one cast
when the parameters are not fp32).

``SlotAttention`` calls :func:`whole_iteration_apply`; users change nothing.
"""
from __future__ import annotations

import torch

#: parameter names in the order the Function takes them (row_layout's names)
PARAM_NAMES = ("ln_in_w", "ln_in_b", "ln_s_w", "ln_s_b", "ln_f_w", "ln_f_b", "wq", "bq", "wk", "bk", "wv", "bv",
               "w_ih", "b_ih", "w_hh", "b_hh", "w1", "b1", "w2", "b2")


def _params_dict(p, eps3):
    c = lambda t: t.detach().contiguous()  # noqa: E731
    p = [c(t) for t in p]
    return dict(ln_in=(p[0], p[1], eps3[0]), ln_s=(p[2], p[3], eps3[1]), ln_f=(p[4], p[5], eps3[2]),
                q=(p[6], p[7]), k=(p[8], p[9]), v=(p[10], p[11]), gru=(p[12], p[14], p[13], p[15]),
                mlp1=(p[16], p[17]), mlp2=(p[18], p[19]))


class _WholeIteration(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cfg, x, mask, slots, mu, logsigma, noise, *params):
        from slotvlm.kernels.slot_iterations import slot_iterations  # noqa: PLC0415
        from slotvlm.kernels import slot_iterations_bwd as kb  # noqa: PLC0415

        iters, k = cfg["iters"], cfg["num_slots"]
        pd = _params_dict(params, cfg["ln_eps"])
        b, _, d = x.shape
        if slots is not None:
            k, init, grad = slots.shape[1], None, kb.GRAD_SLOTS
        elif noise is not None:
            init, grad = ("gaussian", mu.detach().reshape(-1), logsigma.detach().reshape(-1), noise), kb.GRAD_GAUSSIAN
        elif mu.dim() == 2:
            init, grad = ("table", mu.detach()), kb.GRAD_TABLE
        else:
            init, grad = ("table", mu.detach().reshape(-1)), kb.GRAD_MEAN
        if cfg["implicit_grad"]:
            grad = kb.GRAD_NONE
        f32 = dict(device=x.device, dtype=torch.float32)
        buf = torch.empty((iters + 1) * b * k * d + iters * b * k * d + iters * b * k, **f32)  # one allocation
        n1, n2 = (iters + 1) * b * k * d, iters * b * k * d
        save = (buf[:n1].view(iters + 1, b, k, d), buf[n1:n1 + n2].view(iters, b, k, d), buf[n1 + n2:].view(iters, b, k))
        xd = x.detach()
        out = slot_iterations(xd, None if slots is None else slots.detach(), mask, pd, iters=iters, scale=cfg["scale"],
                              eps=cfg["eps"], init=init, num_slots=k, out_dtype=cfg["out_dtype"], save=save)
        ctx.cfg, ctx.grad_code, ctx.pd = cfg, grad, pd
        ctx.save_for_backward(xd, mask, *save, noise, logsigma)
        ctx.slot_dtype = None if slots is None else slots.dtype
        ctx.param_meta = [(t.shape, t.dtype) for t in params]
        ctx.init_meta = None if mu is None else (mu.shape, mu.dtype, None if logsigma is None else logsigma.shape)
        return out

    @staticmethod
    def backward(ctx, dout):
        from slotvlm.kernels import slot_iterations_bwd as kb  # noqa: PLC0415

        x, mask, s_s, s_u, s_den, noise, logsigma = ctx.saved_tensors
        cfg = ctx.cfg
        n_bwd = 1 if cfg["implicit_grad"] else cfg["iters"]
        dx, ds0, grads = kb.slot_iterations_bwd(
            x, mask, (s_s, s_u, s_den), dout, ctx.pd, iters=cfg["iters"], n_bwd=n_bwd, scale=cfg["scale"],
            eps=cfg["eps"], init_grad=ctx.grad_code, noise=noise,
            logsigma=None if logsigma is None else logsigma.detach().reshape(-1).contiguous(),
            need_dx=ctx.needs_input_grad[1])
        pdtype = ctx.param_meta[0][1]
        flat = None
        if pdtype != torch.float32:  # one cast of every gradient (the row layout is contiguous)
            flat = grads["_flat"].to(pdtype)
        pg = []
        for name, (shape, dtype) in zip(PARAM_NAMES, ctx.param_meta):
            gt = grads[name]
            if flat is not None:
                off = gt.storage_offset()
                gt = flat[off:off + gt.numel()]
            pg.append(gt.view(shape))
        dmu = dls = dslots = None
        if ctx.grad_code == kb.GRAD_SLOTS:
            dslots = ds0.to(ctx.slot_dtype)
        elif ctx.grad_code != kb.GRAD_NONE:
            shape, dtype, ls_shape = ctx.init_meta
            gi = grads["init"]
            if flat is not None:
                off = gi.storage_offset()
                gi = flat[off:off + gi.numel()]
            d = x.shape[-1]
            if ctx.grad_code == kb.GRAD_GAUSSIAN:
                dmu, dls = gi[:d].view(shape), gi[d:].view(ls_shape)
            else:
                dmu = gi.view(shape)
        return (None, dx, None, dslots, dmu, dls, None, *pg)


def whole_iteration_apply(module, inputs, slots, mask, num_slots: int, init: tuple | None, out_dtype):
    """All ``module.iters`` iterations of a one-head ``SlotAttention`` on the whole-iteration kernels,
    differentiable (full unrolled backward, or the last iteration only under ``implicit_grad``).

    ``slots`` ``[B, K, D]`` or None with ``init`` as ``SlotAttention._kernel_init`` gives it, but
    holding the parameters themselves (``("gaussian", mu, logsigma, noise)`` / ``("table", t)``)."""
    m = module
    mlp1, mlp2, g = m.mlp[0], m.mlp[-1], m.gru
    params = (m.norm_input.weight, m.norm_input.bias, m.norm_slots.weight, m.norm_slots.bias,
              m.norm_pre_ff.weight, m.norm_pre_ff.bias, m.to_q.weight, m.to_q.bias, m.to_k.weight, m.to_k.bias,
              m.to_v.weight, m.to_v.bias, g.weight_ih, g.bias_ih, g.weight_hh, g.bias_hh,
              mlp1.weight, mlp1.bias, mlp2.weight, mlp2.bias)
    cfg = dict(iters=m.iters, num_slots=num_slots, scale=float(m.scale), eps=float(m.eps),
               implicit_grad=bool(m.implicit_grad), out_dtype=out_dtype,
               ln_eps=(m.norm_input.eps, m.norm_slots.eps, m.norm_pre_ff.eps))
    mu = logsigma = noise = None
    if slots is None:
        if init[0] == "gaussian":
            _, mu, logsigma, noise = init
        else:
            mu = init[1]
    return _WholeIteration.apply(cfg, inputs, mask, slots, mu, logsigma, noise, *params)
