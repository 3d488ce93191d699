"""SlotSSM: slot encoder → per-slot selective state-space model over time → slot mixer.

After "Slot State Space Models" (Jiang et al., 2024): the state is a set of slot vectors; each slot
is carried through time by its own SSM (no interaction there), and slots interact only inside a
frame through self-attention. Everything is causal in time, so the model also runs online, one
frame at a time, through :meth:`SlotSSM.step`.
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_positive_int, check_tensor, describe
from ..backend import requested_backend
from ..ops.scan import selective_scan
from .slot_attention import SlotAttention


def _fused_slot_attention_available() -> bool:
    return importlib.util.find_spec("slotvlm.ops.fused") is not None


def _encoder_backend(backend: str | None) -> str | None:
    """The slot encoder's backend: the same as the scan's, except that ``"triton"``/``"auto"`` fall
    back to the PyTorch reference while this build has no fused slot-attention kernels."""
    want = requested_backend(backend)
    if want != "torch" and not _fused_slot_attention_available():
        return "torch"
    return backend


@dataclass
class SlotSSMState:
    """Streaming state of a :class:`SlotSSM`: per layer, the encoder's slots of the last frame
    ``[B, K, dim]`` (queries for the next frame) and the SSM state ``[B*K, expand*dim, state_dim]``
    (fp32), plus the number of frames seen."""

    slots: list[torch.Tensor]
    ssm: list[torch.Tensor]
    steps: int = 0


class SlotSSMLayer(nn.Module):
    """One SlotSSM layer: slot encoder, per-slot selective SSM over time, slot mixer, optional FFN.

    ``forward(inputs [B, T, N, dim], slots0 [B, K, dim] | None, h0 [B*K, inner, S] | None)`` →
    ``(slots [B, T, K, dim], last encoder slots [B, K, dim], h_last [B*K, inner, S])``.
    """

    def __init__(
        self,
        dim: int,
        num_slots: int,
        *,
        state_dim: int,
        expand: int,
        dt_rank: int,
        encoder_iters: int,
        encoder_heads: int,
        mixer_heads: int,
        ffn_mult: int,
        recurrent_encoder: bool,
        dt_min: float,
        dt_max: float,
        backend: str | None,
    ):
        super().__init__()
        self.dim, self.num_slots, self.state_dim = dim, num_slots, state_dim
        self.inner = inner = expand * dim
        self.dt_rank = dt_rank
        self.mixer_heads = mixer_heads
        self.recurrent_encoder = recurrent_encoder
        self.backend = backend
        # (1) slot encoder: slot attention with softmax over slots, started from the previous frame's
        # slots (recurrent) or from the learned table (every frame independently)
        self.encoder = SlotAttention(
            num_slots, dim, iters=encoder_iters, hidden_dim=dim, heads=encoder_heads, init="learned",
            backend=_encoder_backend(backend),
        )
        # (2) selective SSM per slot (Mamba-style, without the short convolution)
        self.norm_ssm = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, 2 * inner)
        self.x_proj = nn.Linear(inner, dt_rank + 2 * state_dim, bias=False)
        self.dt_proj = nn.Linear(dt_rank, inner)
        nn.init.uniform_(self.dt_proj.weight, -(dt_rank**-0.5), dt_rank**-0.5)
        dt = torch.exp(torch.rand(inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        with torch.no_grad():  # softplus(bias) = dt, log-uniform in [dt_min, dt_max]
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # S4D-real initialisation: A[d, s] = -(s + 1)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, state_dim + 1, dtype=torch.float32)).repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, dim)
        # (3) slot mixer: self-attention across the slots of one frame
        self.norm_mix = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.mix_out = nn.Linear(dim, dim)
        if ffn_mult > 0:
            self.norm_ffn = nn.LayerNorm(dim)
            self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Linear(ffn_mult * dim, dim))
        else:
            self.norm_ffn = self.ffn = None

    def initial_slots(self, batch: int, *, dtype) -> torch.Tensor:
        return self.encoder.initial_slots(batch, self.num_slots, device=None, dtype=dtype)

    def encode(self, inputs: torch.Tensor, slots0: torch.Tensor | None):
        """Slot encoder over the frames of ``inputs [B, T, N, dim]`` → ``([B, T, K, dim], last [B, K, dim])``."""
        b, t, n, d = inputs.shape
        if not self.recurrent_encoder:
            z = self.encoder(inputs.reshape(b * t, n, d)).reshape(b, t, self.num_slots, d)
            return z, z[:, -1]
        slots, out = slots0, []
        # inherently sequential: frame i's queries are frame i-1's slots. unbind, not inputs[:, i]:
        # the backward of T slices would write T full-size gradients of inputs (O(T^2) per step)
        for frame in inputs.unbind(1):
            slots = self.encoder(frame, slots=slots)
            out.append(slots)
        return torch.stack(out, dim=1), slots

    def ssm(self, z: torch.Tensor, h0: torch.Tensor | None):
        """Selective SSM over time, one independent sequence per (batch, slot): ``[B, T, K, dim]``."""
        b, t, k, d = z.shape
        u, gate = self.in_proj(self.norm_ssm(z)).chunk(2, dim=-1)  # [B, T, K, inner] each
        u = F.silu(u).permute(0, 2, 1, 3).reshape(b * k, t, self.inner)
        gate = gate.permute(0, 2, 1, 3).reshape(b * k, t, self.inner)
        dt_in, Bm, Cm = self.x_proj(u).split([self.dt_rank, self.state_dim, self.state_dim], dim=-1)
        delta = F.softplus(self.dt_proj(dt_in))
        A = -torch.exp(self.A_log.float())
        y, h_last = selective_scan(
            u.contiguous(), delta.contiguous(), A, Bm.contiguous(), Cm.contiguous(), self.D, h0, backend=self.backend
        )
        y = self.out_proj(y * F.silu(gate))
        return y.reshape(b, k, t, d).permute(0, 2, 1, 3), h_last

    def mix(self, z: torch.Tensor) -> torch.Tensor:
        """Self-attention across the K slots of each frame: ``[B, T, K, dim]`` → same."""
        b, t, k, d = z.shape
        h = self.mixer_heads
        q, kk, v = self.qkv(self.norm_mix(z)).reshape(b * t, k, 3, h, d // h).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, kk, v)  # [B*T, H, K, dh]
        return self.mix_out(o.transpose(1, 2).reshape(b, t, k, d))

    def forward(self, inputs, slots0=None, h0=None):
        z, last = self.encode(inputs, slots0)
        y, h_last = self.ssm(z, h0)
        z = z + y
        z = z + self.mix(z)
        if self.ffn is not None:
            z = z + self.ffn(self.norm_ffn(z))
        return z, last, h_last


class SlotSSM(nn.Module):
    """Slot State Space Model over a sequence of token sets (e.g. video frames' patch features).

    Each layer: (1) slot encoder — the layer's K slots attend to the frame's tokens with the
    softmax over slots (slot attention, :class:`slotvlm.SlotAttention` with a learned initial table;
    by default the queries at frame t are the encoder's slots of frame t-1, the learned table at
    t = 0); (2) a Mamba-style selective SSM (input-dependent Δ, B, C; diagonal A; fp32 state) run
    over time independently per slot — :func:`slotvlm.ops.scan.selective_scan`, the fused Triton
    scan on the ``"triton"`` backend; (3) slot mixer — self-attention across the slots of each
    frame; then an optional FFN. Layer 1 reads the input tokens, layer l > 1 reads layer l-1's
    slots of the same frame. Residual connections around (2), (3) and the FFN; a final LayerNorm.
    Causal in time: the slots of frame t depend only on frames <= t.

    Args:
        dim: width of input tokens and slots (D).
        num_slots: slots per layer (K).
        num_layers: number of layers (default 2).
        state_dim: SSM state size per channel (S, default 16).
        expand: SSM channels = ``expand * dim`` (default 2).
        dt_rank: rank of the Δ projection (default ``ceil(dim / 16)``).
        encoder_iters: slot-attention iterations per frame (default 1).
        encoder_heads: slot-attention heads (per-head softmax over slots; default 1).
        mixer_heads: heads of the slot mixer (default 4 when it divides ``dim``, else 1).
        ffn_mult: FFN hidden width = ``ffn_mult * dim``; 0 disables the FFN (default 4).
        recurrent_encoder: queries from the previous frame's slots (default True; sequential over
            frames). False: every frame starts from the learned table, so the encoder runs all
            frames at once (parallel over time; still causal).
        dt_min, dt_max: range of the initial step sizes Δ (log-uniform; defaults 1e-3, 1e-1).
        backend: ``"auto"``, ``"torch"`` or ``"triton"``; None reads ``$SLOTVLM_BACKEND``. Selects
            the scan kernel and the slot-attention kernels (the encoder uses the PyTorch reference
            while the build has no fused slot attention).

    Shapes:
        ``forward(x [B, T, N, dim])`` → slots ``[B, T, K, dim]``;
        ``step(x_t [B, N, dim], state)`` → ``(slots_t [B, K, dim], state)``, equal to the
        full-sequence result frame by frame.

    Example::

        model = SlotSSM(dim=64, num_slots=6, num_layers=2)
        slots = model(torch.randn(2, 10, 196, 64))            # [2, 10, 6, 64]
        state = model.init_state(2)
        for t in range(10):
            s_t, state = model.step(frames[:, t], state)       # s_t == slots[:, t]
    """

    def __init__(
        self,
        dim: int,
        num_slots: int,
        num_layers: int = 2,
        *,
        state_dim: int = 16,
        expand: int = 2,
        dt_rank: int | None = None,
        encoder_iters: int = 1,
        encoder_heads: int = 1,
        mixer_heads: int | None = None,
        ffn_mult: int = 4,
        recurrent_encoder: bool = True,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        backend: str | None = None,
    ):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("num_slots", num_slots)
        check_positive_int("num_layers", num_layers)
        check_positive_int("state_dim", state_dim)
        check_positive_int("expand", expand)
        check_positive_int("encoder_iters", encoder_iters)
        check_positive_int("encoder_heads", encoder_heads)
        if dt_rank is None:
            dt_rank = math.ceil(dim / 16)
        check_positive_int("dt_rank", dt_rank)
        if mixer_heads is None:
            mixer_heads = 4 if dim % 4 == 0 else 1
        check_positive_int("mixer_heads", mixer_heads)
        if dim % mixer_heads:
            raise ValueError(f"dim={dim} is not divisible by mixer_heads={mixer_heads}")
        if dim % encoder_heads:
            raise ValueError(f"dim={dim} is not divisible by encoder_heads={encoder_heads}")
        if isinstance(ffn_mult, bool) or not isinstance(ffn_mult, int) or ffn_mult < 0:
            raise ValueError(f"ffn_mult must be an int >= 0, got {ffn_mult!r}")
        if not (isinstance(dt_min, (int, float)) and isinstance(dt_max, (int, float)) and 0 < dt_min <= dt_max):
            raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max, got dt_min={dt_min!r}, dt_max={dt_max!r}")
        requested_backend(backend)  # validate early

        self.dim, self.num_slots, self.num_layers = dim, num_slots, num_layers
        self.state_dim, self.expand = state_dim, expand
        self.backend = backend
        self.layers = nn.ModuleList(
            SlotSSMLayer(
                dim, num_slots, state_dim=state_dim, expand=expand, dt_rank=dt_rank, encoder_iters=encoder_iters,
                encoder_heads=encoder_heads, mixer_heads=mixer_heads, ffn_mult=ffn_mult,
                recurrent_encoder=recurrent_encoder, dt_min=float(dt_min), dt_max=float(dt_max), backend=backend,
            )
            for _ in range(num_layers)
        )
        self.norm_out = nn.LayerNorm(dim)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_slots={self.num_slots}, num_layers={self.num_layers}, "
            f"state_dim={self.state_dim}, expand={self.expand}, backend={self.backend!r}"
        )

    def init_state(self, batch: int, *, device=None, dtype=None) -> SlotSSMState:
        """The state before the first frame: the learned initial slots and zero SSM states."""
        check_positive_int("batch", batch)
        p = self.norm_out.weight
        device = p.device if device is None else torch.device(device)
        dtype = p.dtype if dtype is None else dtype
        inner = self.expand * self.dim
        return SlotSSMState(
            slots=[layer.initial_slots(batch, dtype=dtype).to(device) for layer in self.layers],
            ssm=[torch.zeros(batch * self.num_slots, inner, self.state_dim, device=device) for _ in self.layers],
            steps=0,
        )

    def _check_state(self, state: SlotSSMState, batch: int, device) -> None:
        if not isinstance(state, SlotSSMState):
            raise ValueError(f"state must be a SlotSSMState (from init_state or step), got {type(state).__name__}")
        if len(state.slots) != self.num_layers or len(state.ssm) != self.num_layers:
            raise ValueError(
                f"state holds {len(state.slots)} layers of slots and {len(state.ssm)} of SSM states; "
                f"this model has num_layers={self.num_layers}"
            )
        inner = self.expand * self.dim
        for i, (s, h) in enumerate(zip(state.slots, state.ssm)):
            check_tensor(f"state.slots[{i}]", s, shape=(batch, self.num_slots, self.dim), floating=True, device=device)
            check_tensor(f"state.ssm[{i}]", h, shape=(batch * self.num_slots, inner, self.state_dim), floating=True, device=device)

    def forward(self, x: torch.Tensor, state: SlotSSMState | None = None, *, return_state: bool = False):
        """Run over a whole sequence.

        Args:
            x: ``[B, T, N, dim]`` tokens of T frames (N tokens each).
            state: continue from this state (e.g. a previous call's) instead of the initial one.
            return_state: also return the state after the last frame.

        Returns:
            slots ``[B, T, K, dim]``, or ``(slots, state)`` with ``return_state=True``.
        """
        check_tensor("x", x, ndim=4, floating=True)
        b, t, n, d = x.shape
        if d != self.dim:
            raise ValueError(f"x must have shape [B, T, N, {self.dim}] (dim={self.dim}), got {describe(x)}")
        if b == 0 or t == 0 or n == 0:
            raise ValueError(f"x must have B, T, N >= 1, got {describe(x)}")
        if state is not None:
            self._check_state(state, b, x.device)
        h = x
        new_slots, new_ssm = [], []
        for i, layer in enumerate(self.layers):
            slots0 = None if state is None else state.slots[i]
            h0 = None if state is None else state.ssm[i]
            h, last, h_last = layer(h, slots0, h0)
            new_slots.append(last)
            new_ssm.append(h_last)
        out = self.norm_out(h)
        if not return_state:
            return out
        steps = (0 if state is None else state.steps) + t
        return out, SlotSSMState(slots=new_slots, ssm=new_ssm, steps=steps)

    def step(self, x_t: torch.Tensor, state: SlotSSMState | None = None):
        """One frame of online inference: ``x_t [B, N, dim]`` → ``(slots_t [B, K, dim], new state)``.

        ``state=None`` starts from :meth:`init_state`. Feeding frames one by one gives the same
        slots as :meth:`forward` on the whole sequence.
        """
        check_tensor("x_t", x_t, ndim=3, floating=True)
        out, state = self.forward(x_t[:, None], state, return_state=True)
        return out[:, 0], state
