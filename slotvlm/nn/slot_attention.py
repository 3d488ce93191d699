"""Drop-in ``SlotAttention`` (and ``MultiHeadSlotAttention``) with fused-kernel backends.

Compatible with the ``slot-attention`` package (1.5.x): same constructor arguments, same parameter
names, so its ``state_dict`` loads with ``strict=True`` and gives the same numbers.
"""
from __future__ import annotations

import math
import os

import torch
from torch import nn

from .._checks import check_choice, check_cu_seqlens, check_positive_int, check_tensor, describe
from ..backend import ENV_VAR, FUSED_DTYPES, requested_backend, resolve_backend
from ..ops.slot_attention_ref import slot_attention_step_ref

INITS = ("gaussian", "learned")
WHOLE_ITERATION_ENV = "SLOTVLM_WHOLE_ITERATION"  # "0": never use the whole-iteration kernel


def _torch_gru(x: torch.Tensor, h: torch.Tensor, cell: nn.GRUCell) -> torch.Tensor:
    return cell(x, h)  # ATen's GRU cell: the exact numbers of the slot-attention package


#: When the folded path normalises its inputs with the Triton LayerNorm (kernels/layer_norm.py):
#: ``"cast"`` (default) only when it also converts them (autocast) — otherwise it moves the same bytes
#: as ATen's at a higher host cost —; ``"always"`` (the interpreter tests) every time.
_INPUT_NORM_KERNEL = "cast"


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``t`` in ``dtype`` (floating tensors only; None stays None)."""
    return t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != dtype else t


def _step_impl(backend: str):
    """The (attention step, GRU cell) pair for a concrete backend.

    The GRU callable takes ``(x [M, D], h [M, D], cell: nn.GRUCell)``; the reference of the fused
    GRU is :func:`slotvlm.ops.gru_cell_ref`.
    """
    if backend == "torch":
        return slot_attention_step_ref, _torch_gru
    if backend == "triton":
        try:
            from ..ops import fused  # noqa: PLC0415  (imports triton lazily)
        except ImportError as exc:
            raise ValueError(f"backend='triton' is not available in this build: {exc}") from exc
        return fused.slot_attention_step, fused._gru_cell  # the module checks its inputs once per call
    raise ValueError(f"unknown backend {backend!r}")


class SlotAttention(nn.Module):
    """Slot Attention (Locatello et al. 2020), a drop-in for ``slot_attention.SlotAttention``.

    Args:
        num_slots: K, the default number of slots.
        dim: D, the width of inputs and slots.
        iters: refinement iterations (default 3).
        eps: added to the attention before the weighted mean (default 1e-8).
        hidden_dim: the slot MLP's hidden width is ``max(dim, hidden_dim)`` (as the package does).

    Keyword-only extensions (defaults keep the drop-in behaviour):
        heads: number of attention heads. ``heads=1`` (default) is the package's ``SlotAttention``.
            With ``heads > 1`` (or ``dim_head`` given) the layout is the package's
            ``MultiHeadSlotAttention``: q/k/v project to ``heads * dim_head`` and ``combine_heads``
            maps back to ``dim``. The softmax over slots is taken **per head** (the package's
            convention, not SLATE/OCL's joint softmax over heads × slots).
        dim_head: per-head width (default ``dim // heads``).
        init: ``"gaussian"`` (learnable mean and log-sigma, sampled each call; the package's) or
            ``"learned"`` (a learned ``[num_slots, dim]`` table of per-slot queries, no noise).
        implicit_grad: run all but the last iteration without building a graph and detach the slots
            before the last one (Chang et al. 2022), so backward cost does not grow with ``iters``.
        deterministic_init: with ``init="gaussian"``, start from the mean (no noise). Model code
            sets it for inference; ``forward(deterministic_init=...)`` overrides it per call.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``; None reads ``$SLOTVLM_BACKEND``
            (default ``"auto"``: Triton on CUDA tensors of dtype fp32/fp16/bf16, the PyTorch
            reference on CPU and for other dtypes).

    Shapes:
        inputs ``[B, N, dim]`` → slots ``[B, K, dim]``; with ``return_attn=True`` also the last
        iteration's attention ``[B, K, N]`` (softmax over slots, averaged over heads, 0 at padding).
    """

    # With one head, the triton backend folds the key/value projections into the slots
    # (see slotvlm.ops.fused.slot_attention_step_projected): k and v are never formed. Set to False
    # (on the class or an instance) to run the kernels on explicit k and v instead.
    fold_projections: bool = True
    # Where it applies (see _whole_iteration), the one-head triton path runs all iterations in one
    # launch (slotvlm.kernels.slot_iterations). Set to False (class or instance), or set
    # $SLOTVLM_WHOLE_ITERATION=0, to keep the folded per-iteration path.
    whole_iteration: bool = True

    def __init__(
        self,
        num_slots: int,
        dim: int,
        iters: int = 3,
        eps: float = 1e-8,
        hidden_dim: int = 128,
        *,
        heads: int = 1,
        dim_head: int | None = None,
        init: str = "gaussian",
        implicit_grad: bool = False,
        deterministic_init: bool = False,
        backend: str | None = None,
    ):
        super().__init__()
        check_positive_int("num_slots", num_slots)
        check_positive_int("dim", dim)
        check_positive_int("iters", iters)
        check_positive_int("hidden_dim", hidden_dim)
        check_positive_int("heads", heads)
        check_choice("init", init, INITS)
        if not (isinstance(eps, (int, float)) and eps >= 0 and math.isfinite(eps)):
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        multi_head = heads > 1 or dim_head is not None
        if dim_head is None:
            if dim % heads:
                raise ValueError(f"dim={dim} is not divisible by heads={heads}; pass dim_head explicitly")
            dim_head = dim // heads
        check_positive_int("dim_head", dim_head)
        requested_backend(backend)  # validate early

        self.num_slots = num_slots
        self.dim = dim
        self.iters = iters
        self.eps = float(eps)
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head**-0.5
        self.init = init
        self.implicit_grad = implicit_grad
        self.deterministic_init = deterministic_init
        self.backend = backend

        if init == "gaussian":
            self.slots_mu = nn.Parameter(torch.randn(1, 1, dim))
            self.slots_logsigma = nn.Parameter(torch.zeros(1, 1, dim))
            nn.init.xavier_uniform_(self.slots_logsigma)
        else:
            self.slots_init = nn.Parameter(torch.randn(num_slots, dim) * dim**-0.5)

        inner = heads * dim_head
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.combine_heads = nn.Linear(inner, dim) if multi_head else None
        self.gru = nn.GRUCell(dim, dim)
        hidden = max(dim, hidden_dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
        self.norm_input = nn.LayerNorm(dim)
        self.norm_slots = nn.LayerNorm(dim)
        self.norm_pre_ff = nn.LayerNorm(dim)

    def extra_repr(self) -> str:
        return (
            f"num_slots={self.num_slots}, dim={self.dim}, iters={self.iters}, heads={self.heads}, "
            f"init={self.init!r}, implicit_grad={self.implicit_grad}, backend={self.backend!r}"
        )

    # ------------------------------------------------------------------ helpers
    def initial_slots(
        self, batch: int, num_slots: int, *, device, dtype, deterministic: bool = False
    ) -> torch.Tensor:
        """Starting slots ``[batch, num_slots, dim]``: mu + sigma·noise, the mean, or the table."""
        check_positive_int("batch", batch)
        check_positive_int("num_slots", num_slots)
        if self.init == "learned":
            return self.slots_init.to(dtype).unsqueeze(0).expand(batch, -1, -1)
        mu = self.slots_mu.expand(batch, num_slots, -1)
        if deterministic:
            return mu.to(dtype)
        sigma = self.slots_logsigma.exp().expand(batch, num_slots, -1)
        return mu + sigma * torch.randn(mu.shape, device=device, dtype=dtype)

    def _backend_for(self, inputs: torch.Tensor) -> str:
        """The concrete backend; ``"auto"`` keeps dtypes the kernels do not take (fp64) on the reference."""
        backend = resolve_backend(self.backend, inputs.device)
        if backend == "triton" and requested_backend(self.backend) == "auto" and inputs.dtype not in FUSED_DTYPES:
            return "torch"
        return backend

    def _start_slots(self, slots, batch, num_slots, inputs, deterministic_init):
        """The given starting slots, else the init (deterministic_init None = the module's switch)."""
        if slots is not None:
            return slots
        if deterministic_init is None:
            deterministic_init = self.deterministic_init
        return self.initial_slots(
            batch, num_slots, device=inputs.device, dtype=inputs.dtype, deterministic=deterministic_init
        )

    def _check_forward(self, inputs, num_slots, mask, slots):
        check_tensor("inputs", inputs, ndim=3, floating=True)
        b, n, d = inputs.shape
        if d != self.dim:
            raise ValueError(f"inputs must have shape [B, N, {self.dim}] (dim={self.dim}), got {describe(inputs)}")
        if n == 0 or b == 0:
            raise ValueError(f"inputs must have B >= 1 and N >= 1, got {describe(inputs)}")
        if num_slots is None:
            num_slots = self.num_slots
        check_positive_int("num_slots", num_slots)
        if self.init == "learned" and num_slots != self.num_slots and slots is None:
            raise ValueError(
                f"num_slots={num_slots} differs from the learned slot table's {self.num_slots} "
                "(init='learned' has a fixed number of slots)"
            )
        if mask is not None:
            check_tensor("mask", mask, shape=(b, n), dtype=torch.bool, device=inputs.device)
        if slots is not None:
            check_tensor("slots", slots, shape=(b, None, self.dim), floating=True, device=inputs.device)
            num_slots = slots.shape[1]
        return num_slots

    def _check_dtypes_and_slots(self, inputs, slots) -> None:
        """API edges (issue 11). Inputs (and given slots) must have the parameters' dtype — no
        silent cast — except under ``torch.autocast``, which casts per op; given slots need K >= 1,
        like ``num_slots``."""
        if slots is not None and slots.shape[1] == 0:
            raise ValueError(f"slots must hold K >= 1 slots (as num_slots must be >= 1), got {describe(slots)}")
        param = next(self.parameters(), None)
        if param is None or torch.is_autocast_enabled(inputs.device.type):
            return
        for name, t in (("inputs", inputs), ("slots", slots)):
            if t is not None and t.dtype != param.dtype:
                raise ValueError(
                    f"{name} have dtype {t.dtype} but the module's parameters are {param.dtype}: convert one to "
                    f"the other (module.to({t.dtype}) or {name}.to({param.dtype})), or run under torch.autocast"
                )

    #: how many distinct call signatures :meth:`_checked_call` remembers per module (then it starts over)
    _CHECKED_MAX = 64

    def _call_key(self, inputs, num_slots, mask, slots):
        """Everything :meth:`forward`'s argument checks and backend choice depend on — shapes,
        dtypes, devices, flags, the module's settings, the environment switches —, or None when an
        argument is not of a kind the key can describe (then the checks run and raise as usual)."""
        if not isinstance(inputs, torch.Tensor) or (num_slots is not None and type(num_slots) is not int):
            return None
        meta = []
        for t in (mask, slots):
            if t is None:
                meta.append(None)
            elif isinstance(t, torch.Tensor):
                meta.append((t.shape, t.dtype, t.device))
            else:
                return None
        param = next(iter(self._parameters.values()), None) if self._parameters else None
        if param is None:
            param = next(self.parameters(), None)
        dev = inputs.device
        return (
            inputs.shape, inputs.dtype, dev, num_slots, *meta,
            None if param is None else param.dtype, torch.is_autocast_enabled(dev.type),
            self.backend, self.num_slots, self.dim, self.init,
            os.environ.get(ENV_VAR), os.environ.get("TRITON_INTERPRET"),
        )

    def _checked_call(self, inputs, num_slots, mask, slots) -> tuple[int, str]:
        """``(num_slots, backend)`` for a :meth:`forward` call, its argument checks run once per
        call signature (:meth:`_call_key`): a repeated call at a static shape skips them. Not
        cached while torch.compile traces (the checks are then traced once anyway)."""
        key = None if torch.compiler.is_compiling() else self._call_key(inputs, num_slots, mask, slots)
        cache = self.__dict__.get("_checked")
        if key is not None and cache is not None and key in cache:
            return cache[key]
        num_slots = self._check_forward(inputs, num_slots, mask, slots)
        self._check_dtypes_and_slots(inputs, slots)
        result = num_slots, self._backend_for(inputs)
        if key is not None:
            if cache is None or len(cache) >= self._CHECKED_MAX:
                cache = self.__dict__["_checked"] = {}
            cache[key] = result
        return result

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        inputs: torch.Tensor,
        num_slots: int | None = None,
        *,
        mask: torch.Tensor | None = None,
        slots: torch.Tensor | None = None,
        return_attn: bool = False,
        deterministic_init: bool | None = None,
    ):
        """Run slot attention.

        Args:
            inputs: ``[B, N, dim]`` input features.
            num_slots: K for this call (default ``self.num_slots``).
            mask: ``[B, N]`` bool, True = real token. Padding tokens get zero attention, so a padded
                row gives exactly what its real tokens alone give. An all-padding row gets zero
                updates every iteration (its slots only pass through the GRU and MLP); never NaN.
            slots: ``[B, K, dim]`` starting slots (e.g. the previous frame's), replacing the init.
            return_attn: also return the last iteration's attention ``[B, K, N]``.
            deterministic_init: override ``self.deterministic_init`` for this call.

        Returns:
            slots ``[B, K, dim]``, or ``(slots, attn)`` with ``return_attn=True``.
        """
        num_slots, backend = self._checked_call(inputs, num_slots, mask, slots)
        b = inputs.shape[0]
        step, gru = _step_impl(backend)
        if self._folds(backend) and self._whole_iteration(inputs, num_slots, slots, return_attn):
            # all iterations in one launch (the init too); under implicit_grad with a graph, all but
            # the last, which then runs on the folded path (it has a backward)
            attn = None
            if self._needs_graph(inputs, slots):
                # differentiable: the backward kernel (kernels/slot_iterations_bwd.py) recomputes each
                # iteration from the per-iteration slots the forward saves; under implicit_grad it
                # differentiates the last iteration only (slotvlm.ops.whole_iteration)
                from ..ops.whole_iteration import whole_iteration_apply  # noqa: PLC0415

                init = None if slots is not None else self._kernel_init(b, num_slots, inputs, deterministic_init,
                                                                       detach=False)
                dev = inputs.device.type
                out_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
                slots = whole_iteration_apply(self, inputs, slots, mask, num_slots, init, out_dtype)
            else:
                init = None if slots is not None else self._kernel_init(b, num_slots, inputs, deterministic_init)
                slots = self._iterate_whole(inputs, slots, mask, self.iters, init, num_slots)
        elif self._folds(backend):
            slots = self._start_slots(slots, b, num_slots, inputs, deterministic_init)
            slots, attn = self._iterate_folded(slots, self._norm_input_folded(inputs), mask, None, inputs.shape[1], return_attn)
        else:
            slots = self._start_slots(slots, b, num_slots, inputs, deterministic_init)
            attend = self._attender(backend, step, self.norm_input(inputs), mask=mask)
            slots, attn = self._iterate(slots, attend, gru, return_attn)
        if return_attn:
            return slots, attn.mean(dim=1)
        return slots

    def _attender(self, backend, step, x, *, mask=None, cu_seqlens=None, max_seqlen=None):
        """``attend(q [P, K, H, Dh], want_attn) -> (updates [P, K, H, Dh], attn | None)`` over the
        normalised inputs x (``[P, N, dim]``, or ``[T, dim]`` packed with cu_seqlens)."""
        h, dh = self.heads, self.dim_head
        kw = dict(scale=self.scale, eps=self.eps)
        k = self.to_k(x).unflatten(-1, (h, dh))
        v = self.to_v(x).unflatten(-1, (h, dh))
        if cu_seqlens is None:
            return lambda q, want_attn: step(q, k, v, mask, return_attn=want_attn, **kw)
        from ..ops.fused import _step_varlen  # noqa: PLC0415  (cu_seqlens was checked by forward_varlen)

        return lambda q, want_attn: _step_varlen(q, k, v, cu_seqlens, max_seqlen, return_attn=want_attn, **kw)

    def _run_iterations(self, iterate, slots, return_attn, iters=None):
        """``iters`` (default ``self.iters``) calls of ``iterate(slots, want_attn) -> (slots, attn)``;
        with implicit_grad all but the last without a graph and the slots detached before the last."""
        attn = None
        iters = self.iters if iters is None else iters
        for it in range(iters):
            last = it == iters - 1
            if self.implicit_grad and not last:
                with torch.no_grad():
                    slots, _ = iterate(slots, False)
                continue
            if self.implicit_grad and last:
                slots = slots.detach()
            slots, attn = iterate(slots, return_attn and last)
        return slots, attn

    def _folds(self, backend: str) -> bool:
        return backend == "triton" and self.combine_heads is None and self.fold_projections

    def _needs_graph(self, inputs: torch.Tensor, slots: torch.Tensor | None) -> bool:
        """Whether this call must record autograd history (grad mode on and something requires grad)."""
        if not torch.is_grad_enabled():
            return False
        return (inputs.requires_grad or (slots is not None and slots.requires_grad)
                or any(p.requires_grad for p in self.parameters()))

    def _whole_iteration(self, inputs: torch.Tensor, num_slots: int, slots: torch.Tensor | None, return_attn: bool) -> bool:
        """Whether this call runs on the whole-iteration kernel (``slotvlm.kernels.slot_iterations``).

        The rule (``docs/kernels.md``): the one-head triton path (``_folds``), ``whole_iteration`` not
        switched off (the attribute, or ``$SLOTVLM_WHOLE_ITERATION=0``), D <= 128, K <= 16, MLP hidden
        <= 512, no ``return_attn``, the standard submodules (three affine LayerNorms over
        ``dim``, ``Linear`` q/k/v and MLP with biases, a ``GRUCell`` with biases), and no autograd graph
        needed — or ``implicit_grad=True``, whose iterations before the last need none (the last then
        runs on the folded path, which has a backward). Not while ``torch.compile`` traces.
        """
        if not self.whole_iteration or os.environ.get(WHOLE_ITERATION_ENV, "1") == "0" or return_attn:
            return False
        if torch.compiler.is_compiling():  # the kernel is a bare Triton launch, not a custom op: compile traces the folded path
            return False
        from ..kernels.slot_iterations import MAX_D, MAX_HIDDEN, MAX_K  # noqa: PLC0415

        d, mlp1, mlp2 = self.dim, self.mlp[0], self.mlp[-1]
        if d > MAX_D or num_slots > MAX_K:
            return False
        if not (isinstance(self.mlp, nn.Sequential) and len(self.mlp) == 3 and isinstance(mlp1, nn.Linear)
                and isinstance(self.mlp[1], nn.ReLU) and isinstance(mlp2, nn.Linear) and mlp1.out_features <= MAX_HIDDEN):
            return False
        norms = (self.norm_input, self.norm_slots, self.norm_pre_ff)
        if not all(isinstance(m, nn.LayerNorm) and tuple(m.normalized_shape) == (d,) and m.weight is not None
                   and m.bias is not None for m in norms):
            return False
        linears = (self.to_q, self.to_k, self.to_v, mlp1, mlp2)
        if not all(isinstance(m, nn.Linear) and m.bias is not None for m in linears) or self.gru.bias_ih is None:
            return False
        return True  # with a graph: the whole-iteration backward (kernels/slot_iterations_bwd.py)

    def _kernel_init(self, batch: int, num_slots: int, inputs: torch.Tensor, deterministic_init,
                     detach: bool = True) -> tuple:
        """The ``init`` argument of ``slot_iterations`` equivalent to :meth:`initial_slots` (the same
        noise: one ``randn`` of the same shape, drawn at the same point of the call); with
        ``detach=False`` the parameters themselves, as ``slotvlm.ops.whole_iteration`` takes them."""
        if self.init == "learned":
            return ("table", self.slots_init.detach() if detach else self.slots_init)
        if deterministic_init is None:
            deterministic_init = self.deterministic_init
        mu = self.slots_mu.detach().reshape(-1) if detach else self.slots_mu
        if deterministic_init:
            return ("table", mu)
        noise = torch.randn((batch, num_slots, self.dim), device=inputs.device, dtype=inputs.dtype)
        ls = self.slots_logsigma.detach().reshape(-1) if detach else self.slots_logsigma
        return ("gaussian", mu, ls, noise)

    def _iterate_whole(self, inputs, slots, mask, iters: int, init, num_slots: int) -> torch.Tensor:
        """``iters`` iterations in one launch of the whole-iteration kernel, without a graph; the
        slots start from ``slots`` or, when None, from ``init`` (see :meth:`_kernel_init`)."""
        from ..kernels.slot_iterations import slot_iterations  # noqa: PLC0415

        c = lambda t: t.detach().contiguous()  # noqa: E731  (no copy for nn.Linear's own weights)
        ln = lambda m: (c(m.weight), c(m.bias), m.eps)  # noqa: E731
        lin = lambda m: (c(m.weight), c(m.bias))  # noqa: E731
        g = self.gru
        params = dict(ln_in=ln(self.norm_input), ln_s=ln(self.norm_slots), ln_f=ln(self.norm_pre_ff),
                      q=lin(self.to_q), k=lin(self.to_k), v=lin(self.to_v), mlp1=lin(self.mlp[0]), mlp2=lin(self.mlp[-1]),
                      gru=(c(g.weight_ih), c(g.weight_hh), c(g.bias_ih), c(g.bias_hh)))
        dev = inputs.device.type
        # under autocast the result has autocast's dtype, as the per-op path's would (the arithmetic is fp32)
        out_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
        with torch.no_grad():
            return slot_iterations(inputs.detach(), None if slots is None else slots.detach(), mask, params, iters=iters,
                                   scale=self.scale, eps=self.eps, init=init, num_slots=num_slots, out_dtype=out_dtype)

    def _norm_input_folded(self, inputs: torch.Tensor) -> torch.Tensor:
        """The input LayerNorm of the folded path (``[B, N, dim]`` or packed ``[T, dim]``), written
        in the compute dtype: autocast's when it is on, else the inputs' own. When that differs
        from the inputs' dtype (autocast), one Triton kernel
        (``slotvlm.ops.fused.layer_norm``) reads the inputs in their dtype and stores the normalised
        tokens converted, so fp32 inputs under bf16 autocast cost one pass, not an fp32 LayerNorm
        and a cast (and, in the backward, no cast of the gradient back to fp32). Uses
        ``self.norm_input``'s own weight, bias and eps (parameters and state_dict unchanged); a
        replaced ``norm_input`` that is not a LayerNorm over ``dim`` (or a dim wider than the
        kernel's row limit) runs as given and ``_iterate_folded`` converts its output."""
        from slotvlm.kernels.layer_norm import MAX_D  # noqa: PLC0415  (imports triton, like the backend)

        ln = self.norm_input
        if not isinstance(ln, nn.LayerNorm) or tuple(ln.normalized_shape) != (self.dim,) or self.dim > MAX_D:
            return ln(inputs)
        from ..ops.fused import _layer_norm  # noqa: PLC0415

        dev = inputs.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else inputs.dtype
        if dtype == inputs.dtype and _INPUT_NORM_KERNEL != "always":
            # same bytes as ATen's LayerNorm, and a custom op costs more host time than an aten op
            # (object discovery is host-bound): the kernel only where it removes the casts
            return ln(inputs)
        return _layer_norm(inputs, ln.weight, ln.bias, ln.eps, dtype)

    def _iterate_folded(self, slots, x, mask, cu_seqlens, max_seqlen, return_attn, iters=None):
        """The refinement loop of the one-head triton path, with the projections folded.

        Once per forward: x (the normalised inputs, already in the compute dtype when they come
        from :meth:`_norm_input_folded`) is cast to the compute dtype if needed, the weight products
        ``[W_k | b_k]ᵀ W_q`` (slot LayerNorm output → q' and the logit bias c in one GEMM) and
        ``W_ih [W_v | b_v]`` (the step's ``[u', Σ W]`` → the GRU's input gates in one GEMM) are
        formed, and one pair of input-gradient tokens per differentiated iteration is made (the
        input gradient of all iterations is written once, by their backward). Per iteration:
        LayerNorm, 1 GEMM, the step kernel, 2 GEMMs, the GRU gate kernel, and the MLP block.
        """
        from ..ops.deferred import deferred_linear, weight_grad_tokens  # noqa: PLC0415
        from ..ops.fused import _augment, _gru_gates, fold_step, gru_hidden, x_grad_tokens  # noqa: PLC0415

        dev = x.device.type
        autocast = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
        if autocast is not None and x.dtype != autocast:
            x = x.to(autocast)  # cast once, not per iteration
        b, num_slots, d = slots.shape
        n_max = int(max_seqlen)
        w_kb = _augment(self.to_k.weight, self.to_k.bias)  # [D, D_in + 1]
        q_w = torch.matmul(w_kb.t(), self.to_q.weight)  # [D_in + 1, D]
        q_b = torch.mv(w_kb.t(), self.to_q.bias) if self.to_q.bias is not None else None
        g_w = torch.matmul(self.gru.weight_ih, _augment(self.to_v.weight, self.to_v.bias))  # [3D, D_in + 1]
        mlp1, mlp2 = self.mlp[0], self.mlp[2]
        layers = {
            "q": (q_w, q_b), "gi": (g_w, self.gru.bias_ih), "gh": (self.gru.weight_hh, self.gru.bias_hh),
            "mlp1": (mlp1.weight, mlp1.bias), "mlp2": (mlp2.weight, mlp2.bias),
        }
        if autocast is not None:  # weights too: cast once per forward, not in every iteration's backward
            layers = {k: tuple(_cast(t, autocast) for t in wb) for k, wb in layers.items()}
        n_diff = 1 if self.implicit_grad else self.iters
        tokens, w_tokens = [], {}
        if torch.is_grad_enabled():
            if x.requires_grad:
                tokens = x_grad_tokens(x, cu_seqlens, n_max, b, num_slots, n_diff)[::-1]
            for name, (w, bias) in layers.items():
                if w.requires_grad or (bias is not None and bias.requires_grad):
                    # weight gradients of all iterations in one GEMM (slotvlm.ops.deferred)
                    w_tokens[name] = weight_grad_tokens(w, bias, b * num_slots, n_diff, autocast)[::-1]
        scale, eps = float(self.scale), float(self.eps)

        def linear(name, a, relu=False):
            toks = w_tokens.get(name)
            return deferred_linear(a, *layers[name], toks.pop() if toks and torch.is_grad_enabled() else None, relu)

        def iterate(slots, want_attn):
            prev = slots.reshape(b * num_slots, d)
            qc = linear("q", self.norm_slots(prev)).view(b, num_slots, -1)
            pair = tokens.pop() if tokens and torch.is_grad_enabled() else None
            out, attn = fold_step(qc, x.to(qc.dtype), mask, cu_seqlens, n_max, scale, eps, want_attn, pair)
            gi = linear("gi", out.view(b * num_slots, -1))
            toks = w_tokens.get("gh")
            if toks and torch.is_grad_enabled():  # h's two gradients summed inside one GEMM
                new = gru_hidden(gi, prev, *layers["gh"], toks.pop())
            else:
                gh = linear("gh", prev)
                new = _gru_gates(gi, gh, prev if prev.dtype == gi.dtype else prev.to(gi.dtype))
            new = new + linear("mlp2", linear("mlp1", self.norm_pre_ff(new), relu=True))
            return new.view(b, num_slots, d), attn

        return self._run_iterations(iterate, slots, return_attn, iters)

    def _iterate(self, slots, attend, gru, return_attn):
        """The refinement loop shared by :meth:`forward` and :meth:`forward_varlen`.

        ``attend(q [P, K, H, Dh], want_attn) -> (updates [P, K, H, Dh], attn | None)``.
        """
        b, num_slots, _ = slots.shape
        h, dh = self.heads, self.dim_head

        def iterate(slots, want_attn):
            prev = slots
            q = self.to_q(self.norm_slots(slots)).view(b, num_slots, h, dh)
            updates, attn = attend(q, want_attn)
            updates = updates.reshape(b, num_slots, h * dh)
            if self.combine_heads is not None:
                updates = self.combine_heads(updates)
            new = gru(updates.reshape(-1, self.dim), prev.reshape(-1, self.dim), self.gru)
            new = new.reshape(b, num_slots, self.dim)
            new = new + self.mlp(self.norm_pre_ff(new))
            return new, attn

        return self._run_iterations(iterate, slots, return_attn)

    def forward_varlen(
        self,
        inputs: torch.Tensor,
        cu_seqlens: torch.Tensor,
        num_slots: int | None = None,
        *,
        max_seqlen: int | None = None,
        slots: torch.Tensor | None = None,
        return_attn: bool = False,
        deterministic_init: bool | None = None,
    ):
        """Slot attention over packed sequences of different lengths (no padding).

        Args:
            inputs: ``[T, dim]``, the P sequences concatenated; sequence ``p`` is
                ``inputs[cu_seqlens[p]:cu_seqlens[p+1]]``.
            cu_seqlens: int32 or int64 ``[P + 1]``, starting at 0, non-decreasing, ending at T
                (flash-attn's varlen convention; checked with one host sync). An empty sequence
                behaves like an all-padding row.
            num_slots, slots, deterministic_init: as in :meth:`forward` (slots ``[P, K, dim]``).
            max_seqlen: the longest sequence (or more); computed from cu_seqlens if None.
            return_attn: also return the last iteration's attention ``[K, T]`` laid out like the
                tokens (softmax over slots, averaged over heads).

        Returns:
            slots ``[P, K, dim]``, or ``(slots, attn [K, T])``. Equal to :meth:`forward` on the
            zero-padded batch with the matching mask. The torch backend computes it that way; the
            triton backend runs the varlen kernel directly on the packed tokens.
        """
        check_tensor("inputs", inputs, ndim=2, floating=True)
        t, d = inputs.shape
        if d != self.dim:
            raise ValueError(f"inputs must have shape [T, {self.dim}] (dim={self.dim}), got {describe(inputs)}")
        cu_seqlens, _, max_seqlen = check_cu_seqlens(cu_seqlens, t, device=inputs.device, max_seqlen=max_seqlen)
        p = cu_seqlens.shape[0] - 1
        num_slots = num_slots if num_slots is not None else self.num_slots
        if slots is not None:
            check_tensor("slots", slots, shape=(p, None, self.dim), floating=True, device=inputs.device)
        self._check_dtypes_and_slots(inputs, slots)
        backend = self._backend_for(inputs)
        if backend == "torch":
            n = max(max_seqlen, 1)
            idx = torch.arange(n, device=inputs.device)
            lens = cu_seqlens[1:] - cu_seqlens[:-1]
            mask = idx[None, :] < lens[:, None]  # [P, n]
            padded = inputs.new_zeros(p, n, d)
            padded[mask] = inputs
            out = self.forward(
                padded, num_slots, mask=mask, slots=slots, return_attn=return_attn,
                deterministic_init=deterministic_init,
            )
            if not return_attn:
                return out
            out, attn = out
            return out, attn.permute(1, 0, 2)[:, mask]  # [K, T]
        check_positive_int("num_slots", num_slots)
        if slots is not None:
            num_slots = slots.shape[1]
        elif self.init == "learned" and num_slots != self.num_slots:
            raise ValueError(
                f"num_slots={num_slots} differs from the learned slot table's {self.num_slots} "
                "(init='learned' has a fixed number of slots)"
            )
        step, gru = _step_impl(backend)
        slots = self._start_slots(slots, p, num_slots, inputs, deterministic_init)
        if self._folds(backend):
            slots, attn = self._iterate_folded(
                slots, self._norm_input_folded(inputs), None, cu_seqlens, max_seqlen, return_attn
            )
        else:
            attend = self._attender(
                backend, step, self.norm_input(inputs), cu_seqlens=cu_seqlens, max_seqlen=max_seqlen
            )
            slots, attn = self._iterate(slots, attend, gru, return_attn)
        if return_attn:
            return slots, attn.mean(dim=0)
        return slots


class MultiHeadSlotAttention(SlotAttention):
    """Drop-in for ``slot_attention.MultiHeadSlotAttention``: per-head softmax over slots,
    q/k/v of width ``heads * dim_head`` and a ``combine_heads`` projection. Takes the same
    keyword-only extensions as :class:`SlotAttention`."""

    def __init__(
        self,
        num_slots: int,
        dim: int,
        heads: int = 4,
        dim_head: int = 64,
        iters: int = 3,
        eps: float = 1e-8,
        hidden_dim: int = 128,
        **kwargs,
    ):
        super().__init__(num_slots, dim, iters, eps, hidden_dim, heads=heads, dim_head=dim_head, **kwargs)
