"""SlowFast Slots: the Slot-VLM connector from CLIP patch features to LLM tokens.

Object branch ("slow"): ``t_d`` frames sampled uniformly, slot attention over each frame's
``G×G`` patch tokens → ``N_s`` slots per frame, a learnable temporal position embedding added per
frame to its slots, linear S-Proj. Event branch ("fast"): the features average-pooled with stride
``s`` → ``(G/s)×(G/s)`` positions; for each position, slot attention along time over its ``T``
tokens (a learnable temporal position embedding added to each token) → ``N_f`` slots, linear F-Proj.
Both token sets are concatenated and projected to the LLM width.

With the paper's sizes (G=16, t_d=8, N_s=8, s=4, N_f=8) that is 64 + 128 = 192 tokens.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_positive_int, check_tensor, describe
from ..nn.slot_attention import SlotAttention

__all__ = ["SlowFastSlots", "SlotGrouper", "QueryFormer", "slowfast_pool_features"]


# ---------------------------------------------------------------------- pooling
def _uniform_indices(num_frames: int, k: int) -> torch.Tensor:
    """``k`` frame indices spread uniformly over ``num_frames`` (repeats allowed when T < k): the
    object branch's frames, the same choice :func:`slotvlm.video.slowfast_pool` makes."""
    from ..video import uniform_indices  # noqa: PLC0415

    return uniform_indices(int(num_frames), int(k), allow_repeat=True)


def slowfast_pool_features(
    features: Sequence[torch.Tensor] | torch.Tensor, num_slow: int = 8, stride: int = 4
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Pool full features into the cached form the connector also accepts.

    Args:
        features: a list of ``[T_i, G, G, D]`` tensors (videos of different lengths) or one
            ``[B, T, G, G, D]`` tensor.

    Returns:
        ``slow [B, num_slow, G, G, D]`` and ``fast``: a list of ``[T_i, G/s, G/s, D]`` tensors.
    """
    from ..video import slowfast_pool  # noqa: PLC0415  (the C++ op)

    if isinstance(features, torch.Tensor) and features.dim() == 5:
        slow, fast = slowfast_pool(features, num_slow=num_slow, stride=stride)
        return slow, list(fast.unbind(0))
    slows, fasts = [], []
    for f in features:
        s, fa = slowfast_pool(f.unsqueeze(0), num_slow=num_slow, stride=stride)
        slows.append(s)
        fasts.append(fa[0])
    return torch.cat(slows, 0), fasts


# ---------------------------------------------------------------------- groupers
class SlotGrouper(nn.Module):
    """Slot attention with a reproducible start in eval mode.

    Training samples the initial slots from the learnable Gaussian (``mu + sigma·noise``, fresh
    noise each call). Eval mode uses one fixed draw of the noise (``eval_noise``, from
    ``seed``), so outputs are bit-identical across calls and a video gives the same slots alone or
    in a batch. (Starting every slot from ``mu`` — ``deterministic_init`` — would make all slots
    identical: they would receive identical updates and never separate.)

    Shapes: ``inputs [B, N, dim]``, ``mask [B, N]`` bool (True = real) → ``slots [B, K, dim]``,
    and ``attn [B, K, N]`` with ``return_attn=True``.
    """

    def __init__(self, num_slots: int, dim: int, iters: int = 3, hidden_dim: int = 128, seed: int = 0,
                 backend: str | None = None):
        super().__init__()
        self.attn = SlotAttention(num_slots, dim, iters=iters, hidden_dim=hidden_dim, backend=backend)
        gen = torch.Generator().manual_seed(int(seed))
        self.register_buffer("eval_noise", torch.randn(num_slots, dim, generator=gen), persistent=False)

    @property
    def num_slots(self) -> int:
        return self.attn.num_slots

    def _start(self, batch: int, like: torch.Tensor) -> torch.Tensor | None:
        if self.training:
            return None  # SlotAttention samples fresh noise
        a = self.attn
        start = a.slots_mu[0] + a.slots_logsigma[0].exp() * self.eval_noise.to(a.slots_mu.dtype)
        return start.to(like.dtype).unsqueeze(0).expand(batch, -1, -1)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor | None = None, return_attn: bool = False):
        out = self.attn(inputs, mask=mask, slots=self._start(inputs.shape[0], inputs), return_attn=return_attn)
        return out if return_attn else (out, None)

    @property
    def supports_varlen(self) -> bool:
        return hasattr(self.attn, "forward_varlen")

    def forward_varlen(self, inputs: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                       return_attn: bool = False):
        """Packed sequences: ``inputs [total, dim]``, ``cu_seqlens`` int32 ``[P + 1]`` →
        ``slots [P, K, dim]`` and ``attn [K, total]`` with ``return_attn`` (the kernels' varlen path)."""
        p = cu_seqlens.shape[0] - 1
        out = self.attn.forward_varlen(inputs, cu_seqlens, max_seqlen=max_seqlen, slots=self._start(p, inputs),
                                       return_attn=return_attn)
        return out if return_attn else (out, None)


class QueryFormer(nn.Module):
    """A small Q-Former: ``num_queries`` learned queries, each block = self-attention over the
    queries, cross-attention to the inputs, MLP (pre-LayerNorm, residual). The baseline the paper
    compares slots against.

    Shapes: ``inputs [B, N, dim]``, ``mask [B, N]`` bool (True = real) → ``[B, K, dim]`` and the last
    block's cross-attention ``[B, K, N]`` (averaged over heads) with ``return_attn=True``.
    """

    def __init__(self, num_queries: int, dim: int, layers: int = 2, heads: int = 8, mlp_ratio: int = 4):
        super().__init__()
        check_positive_int("num_queries", num_queries)
        if dim % heads:
            raise ValueError(f"qformer_heads={heads} must divide the slot width dim={dim}")
        self.num_slots = num_queries
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.norm_input = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            blk = nn.Module()
            blk.norm1, blk.norm2, blk.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
            blk.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
            blk.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
            blk.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))
            self.blocks.append(blk)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor | None = None, return_attn: bool = False):
        x = self.norm_input(inputs)
        q = self.queries.to(inputs.dtype).unsqueeze(0).expand(inputs.shape[0], -1, -1)
        pad = None if mask is None else ~mask
        attn = None
        for i, blk in enumerate(self.blocks):
            h = blk.norm1(q)
            q = q + blk.self_attn(h, h, h, need_weights=False)[0]
            want = return_attn and i == len(self.blocks) - 1
            out, w = blk.cross_attn(blk.norm2(q), x, x, key_padding_mask=pad, need_weights=want)
            q = q + out
            q = q + blk.mlp(blk.norm3(q))
            if want:
                attn = w
        return q, attn


# ---------------------------------------------------------------------- the connector
class SlowFastSlots(nn.Module):
    """SlowFast Slots connector: CLIP patch features → ``[B, L, llm_dim]`` LLM tokens.

    Args:
        vision_dim: Dv, width of the CLIP features (1024 for ViT-L/14).
        llm_dim: width of the LLM embeddings (4096 for a 7B LLaMA).
        grid_size: G, the patch grid side (16 for 224/14).
        use_slow / use_fast: object / event branch on or off.
        num_slow_frames: t_d. pool_stride: s. num_slots_slow: N_s. num_slots_fast: N_f.
        slot_dim, slot_iters, slot_hidden_dim: slot attention sizes (inputs are linearly projected
            to ``slot_dim`` when it differs from ``vision_dim``).
        proj_dim: output width of S-Proj and F-Proj.
        max_frames: rows of the event branch's temporal position table; a longer video gets the
            table linearly interpolated to its length.
        grouper: ``"slot_attention"`` (Slot-VLM) or ``"qformer"`` (the Q-Former baseline).
        event_encoder: ``"slot_attention"`` or ``"slot_ssm"`` (needs ``slotvlm.nn.slot_ssm``).

    Inputs (``forward``): either ``features`` — a list of ``[T_i, G, G, Dv]`` tensors or one
    ``[B, T, G, G, Dv]`` tensor — or the cached pre-pooled form ``slow=[B, t_d, G, G, Dv]`` and
    ``fast=`` a list of ``[T_i, G/s, G/s, Dv]`` tensors (or one ``[B, T, G/s, G/s, Dv]``). Any
    ``T_i >= 1``; videos of different lengths are padded and masked in the event branch, so a
    video's tokens do not depend on the other videos in its batch.

    Output: ``[B, L, llm_dim]`` with ``L = t_d·N_s (object, first) + (G/s)²·N_f (event)``;
    with ``return_attn=True`` also a dict of attention maps (``"slow"``: ``[B, t_d, N_s, G·G]``,
    ``"slow_indices"``: ``[B, t_d]``, ``"fast"``: ``[B, P, N_f, T_max]``, ``"lengths"``: ``[B]``).
    """

    def __init__(
        self,
        vision_dim: int,
        llm_dim: int,
        *,
        grid_size: int = 16,
        use_slow: bool = True,
        use_fast: bool = True,
        num_slow_frames: int = 8,
        pool_stride: int = 4,
        num_slots_slow: int = 8,
        num_slots_fast: int = 8,
        slot_dim: int = 1024,
        slot_iters: int = 3,
        slot_hidden_dim: int = 1024,
        proj_dim: int = 1024,
        max_frames: int = 256,
        grouper: str = "slot_attention",
        event_encoder: str = "slot_attention",
        eval_noise_seed: int = 0,
        qformer_layers: int = 2,
        qformer_heads: int = 8,
        backend: str | None = None,
    ):
        super().__init__()
        for name, value in [("vision_dim", vision_dim), ("llm_dim", llm_dim), ("grid_size", grid_size),
                            ("pool_stride", pool_stride), ("max_frames", max_frames)]:
            check_positive_int(name, value)
        if grid_size % pool_stride:
            raise ValueError(f"pool_stride={pool_stride} must divide the patch grid side grid_size={grid_size}")
        if not (use_slow or use_fast):
            raise ValueError(f"at least one branch must be on: use_slow={use_slow!r}, use_fast={use_fast!r}")
        if grouper not in ("slot_attention", "qformer"):
            raise ValueError(f"grouper must be 'slot_attention' or 'qformer', got {grouper!r}")
        if event_encoder not in ("slot_attention", "slot_ssm"):
            raise ValueError(f"event_encoder must be 'slot_attention' or 'slot_ssm', got {event_encoder!r}")
        self.vision_dim, self.llm_dim, self.grid_size = vision_dim, llm_dim, grid_size
        self.use_slow, self.use_fast = use_slow, use_fast
        self.num_slow_frames, self.pool_stride = num_slow_frames, pool_stride
        self.num_slots_slow, self.num_slots_fast = num_slots_slow, num_slots_fast
        self.slot_dim, self.max_frames, self.grouper = slot_dim, max_frames, grouper
        self.event_encoder = event_encoder
        self.fast_grid = grid_size // pool_stride
        # Batches of videos with different lengths: "auto" packs them for the kernels' varlen path
        # on CUDA (no work on padding) and pads + masks on CPU; True / False force one or the other.
        self.varlen: bool | str = "auto"

        def make_grouper(k: int, seed: int) -> nn.Module:
            if grouper == "qformer":
                return QueryFormer(k, slot_dim, layers=qformer_layers, heads=qformer_heads)
            return SlotGrouper(k, slot_dim, iters=slot_iters, hidden_dim=slot_hidden_dim, seed=seed, backend=backend)

        def in_proj() -> nn.Module:
            return nn.Identity() if vision_dim == slot_dim else nn.Linear(vision_dim, slot_dim)

        if use_slow:
            check_positive_int("num_slow_frames", num_slow_frames)
            self.slow_in = in_proj()
            self.slow_slots = make_grouper(num_slots_slow, eval_noise_seed)
            self.slow_pos = nn.Parameter(torch.randn(num_slow_frames, 1, slot_dim) * 0.02)
            self.slow_proj = nn.Linear(slot_dim, proj_dim)  # S-Proj
        if use_fast:
            self.fast_in = in_proj()
            if event_encoder == "slot_ssm":
                if grouper != "slot_attention":
                    raise ValueError("event_encoder='slot_ssm' replaces slot attention; it cannot be combined "
                                     f"with grouper={grouper!r}")
                self.fast_slots = _make_ssm_events(num_slots_fast, slot_dim, self.fast_grid**2, backend)
            else:
                self.fast_slots = make_grouper(num_slots_fast, eval_noise_seed + 1)
            self.fast_pos = nn.Parameter(torch.randn(max_frames, slot_dim) * 0.02)
            self.fast_proj = nn.Linear(slot_dim, proj_dim)  # F-Proj
        self.proj = nn.Linear(proj_dim, llm_dim)  # Proj to the LLM width

    @classmethod
    def from_config(cls, cfg, vision_dim: int, llm_dim: int, *, backend: str | None = None) -> "SlowFastSlots":
        """Build from a :class:`SlotVLMConfig` (``connector`` "slowfast" or "qformer")."""
        return cls(
            vision_dim, llm_dim, grid_size=cfg.grid_size or 16, use_slow=cfg.use_slow, use_fast=cfg.use_fast,
            num_slow_frames=cfg.num_slow_frames, pool_stride=cfg.pool_stride, num_slots_slow=cfg.num_slots_slow,
            num_slots_fast=cfg.num_slots_fast, slot_dim=cfg.slot_dim, slot_iters=cfg.slot_iters,
            slot_hidden_dim=cfg.slot_hidden_dim, proj_dim=cfg.proj_dim, max_frames=cfg.max_frames,
            grouper="qformer" if cfg.connector == "qformer" else "slot_attention",
            event_encoder=cfg.event_encoder, eval_noise_seed=cfg.eval_noise_seed,
            qformer_layers=cfg.qformer_layers, qformer_heads=cfg.qformer_heads, backend=backend,
        )

    @property
    def num_tokens(self) -> int:
        """L, tokens per video."""
        return (self.num_slow_frames * self.num_slots_slow if self.use_slow else 0) + (
            self.fast_grid**2 * self.num_slots_fast if self.use_fast else 0
        )

    # ------------------------------------------------------------------ input handling
    def _param_dtype(self) -> torch.dtype:
        return self.proj.weight.dtype

    def prepare_inputs(self, features=None, slow=None, fast=None):
        """Validate and normalise inputs to ``(slow [B, t_d, G, G, Dv] | None, fast list | None, slow_indices)``."""
        g, dv, fg = self.grid_size, self.vision_dim, self.fast_grid
        slow_idx = None
        if features is not None:
            if slow is not None or fast is not None:
                raise ValueError("pass either features=... or the cached slow=/fast= form, not both")
            if isinstance(features, torch.Tensor):
                check_tensor("features", features, shape=(None, None, g, g, dv), floating=True)
                feats = list(features.unbind(0))
            else:
                feats = list(features)
            if not feats:
                raise ValueError("features is empty: need at least one video")
            for i, f in enumerate(feats):
                check_tensor(f"features[{i}]", f, shape=(None, g, g, dv), floating=True)
                if f.shape[0] < 1:
                    raise ValueError(f"features[{i}] has no frames: {describe(f)}")
            slow, fast = slowfast_pool_features(feats, self.num_slow_frames, self.pool_stride)
            slow_idx = torch.stack([_uniform_indices(f.shape[0], self.num_slow_frames) for f in feats])
            return (slow if self.use_slow else None), (fast if self.use_fast else None), slow_idx
        if self.use_slow:
            if slow is None:
                raise ValueError("slow=[B, t_d, G, G, Dv] is required when the object branch is on (use_slow=True)")
            check_tensor("slow", slow, shape=(None, self.num_slow_frames, g, g, dv), floating=True)
        if self.use_fast:
            if fast is None:
                raise ValueError("fast (a list of [T_i, G/s, G/s, Dv]) is required when the event branch is on")
            fast = list(fast.unbind(0)) if isinstance(fast, torch.Tensor) and fast.dim() == 5 else list(fast)
            for i, f in enumerate(fast):
                check_tensor(f"fast[{i}]", f, shape=(None, fg, fg, dv), floating=True)
                if f.shape[0] < 1:
                    raise ValueError(f"fast[{i}] has no frames: {describe(f)}")
            if self.use_slow and len(fast) != slow.shape[0]:
                raise ValueError(f"slow has batch {slow.shape[0]} but fast has {len(fast)} videos")
        return (slow if self.use_slow else None), (fast if self.use_fast else None), slow_idx

    # ------------------------------------------------------------------ branches
    def encode_slow(self, slow: torch.Tensor, return_attn: bool = False):
        """Object slots: ``slow [B, t_d, G, G, Dv]`` → ``[B, t_d, N_s, slot_dim]`` (temporal
        position embedding added), and attention ``[B, t_d, N_s, G·G]`` with ``return_attn``."""
        b, t = slow.shape[:2]
        x = self.slow_in(slow.to(self._param_dtype()).reshape(b * t, self.grid_size**2, self.vision_dim))
        slots, attn = self.slow_slots(x, return_attn=return_attn)
        slots = slots.reshape(b, t, -1, self.slot_dim) + self.slow_pos.to(slots.dtype)
        if attn is not None:
            attn = attn.reshape(b, t, attn.shape[1], attn.shape[2])
        return slots, attn

    def _fast_positions(self, length: int) -> torch.Tensor:
        pos = self.fast_pos
        if length <= self.max_frames:
            return pos[:length]
        # Beyond the table: stretch it linearly over the video's length.
        return F.interpolate(pos.t().unsqueeze(0), size=length, mode="linear", align_corners=True)[0].t()

    def encode_fast(self, fast: Sequence[torch.Tensor], return_attn: bool = False):
        """Event slots: a list of ``[T_i, G/s, G/s, Dv]`` → ``[B, P, N_f, slot_dim]`` (P = (G/s)²),
        and attention ``[B, P, N_f, T_max]`` (0 on padding) with ``return_attn``."""
        lengths = [int(f.shape[0]) for f in fast]
        b, t_max, p = len(fast), max(lengths), self.fast_grid**2
        dtype = self._param_dtype()
        x = fast[0].new_zeros((b, t_max, p, self.vision_dim), dtype=dtype)
        mask = torch.zeros(b, t_max, dtype=torch.bool, device=x.device)
        for i, f in enumerate(fast):
            x[i, : lengths[i]] = f.reshape(lengths[i], p, self.vision_dim).to(dtype)
            mask[i, : lengths[i]] = True
        x = self.fast_in(x)  # [B, T, P, D]
        pos = torch.zeros(b, t_max, 1, self.slot_dim, dtype=x.dtype, device=x.device)
        for i, n in enumerate(lengths):
            pos[i, :n, 0] = self._fast_positions(n).to(x.dtype)
        x = (x + pos).permute(0, 2, 1, 3).reshape(b * p, t_max, self.slot_dim)
        full = all(n == t_max for n in lengths)
        seq_mask = None if full else mask.unsqueeze(1).expand(b, p, t_max).reshape(b * p, t_max)
        if self.event_encoder == "slot_ssm":
            seq_lengths = torch.tensor(lengths).repeat_interleave(p)
            slots, attn = self.fast_slots(x, lengths=seq_lengths, return_attn=return_attn)
        elif seq_mask is not None and self._use_varlen(x):
            slots, attn = self._fast_varlen(x, seq_mask, [n for n in lengths for _ in range(p)], return_attn)
        else:
            slots, attn = self.fast_slots(x, mask=seq_mask, return_attn=return_attn)
        slots = slots.reshape(b, p, -1, self.slot_dim)
        if attn is not None:
            attn = attn.reshape(b, p, attn.shape[1], t_max)
        return slots, attn, torch.tensor(lengths)

    def _use_varlen(self, x: torch.Tensor) -> bool:
        if not getattr(self.fast_slots, "supports_varlen", False):
            return False
        return x.is_cuda if self.varlen == "auto" else bool(self.varlen)

    def _fast_varlen(self, x: torch.Tensor, seq_mask: torch.Tensor, seq_lengths: list[int], return_attn: bool):
        """The event branch on packed tokens (no compute on padding): ``x [M, T_max, D]`` with
        ``seq_mask [M, T_max]`` → slots ``[M, K, D]`` and attention ``[M, K, T_max]`` (0 on padding)."""
        packed = x[seq_mask]  # row-major: sequence by sequence
        cu = torch.zeros(len(seq_lengths) + 1, dtype=torch.int32)
        cu[1:] = torch.tensor(seq_lengths).cumsum(0)
        slots, attn = self.fast_slots.forward_varlen(packed, cu.to(x.device), max(seq_lengths), return_attn)
        if attn is not None:
            full = attn.new_zeros(x.shape[0], attn.shape[0], x.shape[1])
            full.permute(1, 0, 2)[:, seq_mask] = attn
            attn = full
        return slots, attn

    # ------------------------------------------------------------------ forward
    def forward(self, features=None, *, slow=None, fast=None, return_attn: bool = False):
        """See the class docstring. Returns ``[B, L, llm_dim]`` (and the attention dict)."""
        slow, fast, slow_idx = self.prepare_inputs(features, slow, fast)
        parts, info = [], {}
        if self.use_slow:
            s, a = self.encode_slow(slow, return_attn)
            parts.append(self.slow_proj(s.flatten(1, 2)))
            info["slow"], info["slow_indices"] = a, slow_idx
        if self.use_fast:
            f, a, lengths = self.encode_fast(fast, return_attn)
            parts.append(self.fast_proj(f.flatten(1, 2)))
            info["fast"], info["lengths"] = a, lengths
        out = self.proj(torch.cat(parts, dim=1))
        return (out, info) if return_attn else out


def _make_ssm_events(num_slots: int, dim: int, positions: int, backend: str | None = None) -> nn.Module:
    try:
        from ..nn.slot_ssm import SlotSSM  # noqa: PLC0415
    except ImportError as exc:
        raise ValueError(f"event_encoder='slot_ssm' needs slotvlm.nn.slot_ssm, which is not available: {exc}") from exc
    return _SSMEvents(SlotSSM(dim, num_slots, 1, backend=backend), positions)


class _SSMEvents(nn.Module):
    """Event slots from a SlotSSM run over time (``event_encoder="slot_ssm"``).

    Each frame's ``P`` pooled positions form one token set (N = P tokens per frame), so the slot
    encoder's softmax over slots makes the ``K`` slots compete for the frame's regions; the
    selective SSM then carries each slot through time. The event tokens are the slots read at the
    ends of ``P`` equal segments of each video's real frames (frame ``floor((j+1)·T_i/P) - 1`` for
    segment j; the last one sees the whole video): ``P·K`` tokens, the same count and layout as
    per-position slot attention. The model is causal in time, so trailing padding never changes
    them and a video gives the same tokens alone or in a batch.

    ``forward(x [B·P, T, D] (position-major, as the event branch lays it out), lengths [B·P])`` →
    ``(slots [B·P, K, D], None)``.
    """

    def __init__(self, ssm: nn.Module, positions: int):
        super().__init__()
        self.ssm, self.positions = ssm, positions

    @staticmethod
    def segment_ends(length: int, points: int) -> torch.Tensor:
        """Frame indices ``floor((j+1)·length/points) - 1`` (clamped at 0) for ``j < points``."""
        return ((torch.arange(1, points + 1) * length) // points - 1).clamp(min=0)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, return_attn: bool = False):
        m, t, d = x.shape
        p = self.positions
        b = m // p
        frames = x.reshape(b, p, t, d).transpose(1, 2)  # [B, T, P, D]: P tokens per frame
        states = self.ssm(frames)  # [B, T, K, D]
        lens = lengths.reshape(b, p)[:, 0].tolist()
        idx = torch.stack([self.segment_ends(int(n), p) for n in lens]).to(x.device)  # [B, P]
        slots = states[torch.arange(b, device=x.device)[:, None], idx]  # [B, P, K, D]
        return slots.reshape(b * p, -1, d), None


# ---------------------------------------------------------------------- Video-ChatGPT baseline
class PoolingConnector(nn.Module):
    """Video-ChatGPT's connector: spatial + temporal average pooling and one linear layer.

    Temporal tokens: each frame's features averaged over space (Video-ChatGPT samples exactly 100
    frames, giving 100 tokens; here a video's ``T`` per-frame tokens are linearly interpolated
    along time to ``num_frames``). Spatial tokens: each of the ``G·G`` positions averaged over
    time. Output ``[B, num_frames + G·G, llm_dim]`` (356 for G=16, num_frames=100), temporal first.

    From the cached form, temporal tokens come from ``fast`` (the mean over the pooled grid is the
    mean over space) and spatial tokens from the ``t_d`` uniformly sampled ``slow`` frames — an
    approximation of the mean over all frames.
    """

    def __init__(self, vision_dim: int, llm_dim: int, *, grid_size: int = 16, num_frames: int = 100,
                 num_slow_frames: int = 8, pool_stride: int = 4):
        super().__init__()
        self.vision_dim, self.grid_size, self.num_frames = vision_dim, grid_size, num_frames
        self.num_slow_frames, self.pool_stride = num_slow_frames, pool_stride
        self.proj = nn.Linear(vision_dim, llm_dim)

    @classmethod
    def from_config(cls, cfg, vision_dim: int, llm_dim: int, **_) -> "PoolingConnector":
        return cls(vision_dim, llm_dim, grid_size=cfg.grid_size or 16, num_frames=cfg.pooling_num_frames,
                   num_slow_frames=cfg.num_slow_frames, pool_stride=cfg.pool_stride)

    @property
    def num_tokens(self) -> int:
        return self.num_frames + self.grid_size**2

    def _temporal(self, per_frame: torch.Tensor) -> torch.Tensor:  # [T, D] -> [num_frames, D]
        return F.interpolate(per_frame.t().unsqueeze(0), size=self.num_frames, mode="linear",
                             align_corners=True)[0].t()

    def forward(self, features=None, *, slow=None, fast=None, return_attn: bool = False):
        g, dv = self.grid_size, self.vision_dim
        dtype = self.proj.weight.dtype
        tokens = []
        if features is not None:
            feats = list(features.unbind(0)) if isinstance(features, torch.Tensor) else list(features)
            if not feats:
                raise ValueError("features is empty: need at least one video")
            for i, f in enumerate(feats):
                check_tensor(f"features[{i}]", f, shape=(None, g, g, dv), floating=True)
                f = f.to(dtype).reshape(f.shape[0], g * g, dv)
                tokens.append(torch.cat([self._temporal(f.mean(1)), f.mean(0)], 0))
        else:
            if slow is None or fast is None:
                raise ValueError("the pooling connector needs features=... or both slow= and fast=")
            check_tensor("slow", slow, shape=(None, None, g, g, dv), floating=True)
            fast = list(fast.unbind(0)) if isinstance(fast, torch.Tensor) else list(fast)
            if len(fast) != slow.shape[0]:
                raise ValueError(f"slow has batch {slow.shape[0]} but fast has {len(fast)} videos")
            for i, (s, f) in enumerate(zip(slow, fast)):
                check_tensor(f"fast[{i}]", f, shape=(None, None, None, dv), floating=True)
                temporal = f.to(dtype).flatten(1, 2).mean(1)
                spatial = s.to(dtype).reshape(s.shape[0], g * g, dv).mean(0)
                tokens.append(torch.cat([self._temporal(temporal), spatial], 0))
        out = self.proj(torch.stack(tokens))
        return (out, {}) if return_attn else out


def build_connector(cfg, vision_dim: int, llm_dim: int, *, backend: str | None = None) -> nn.Module:
    """The connector a :class:`SlotVLMConfig` names."""
    if cfg.connector == "pooling":
        return PoolingConnector.from_config(cfg, vision_dim, llm_dim)
    return SlowFastSlots.from_config(cfg, vision_dim, llm_dim, backend=backend)
