"""Training objectives: stage-1 slot reconstruction (DINOSAUR style) and the answer-token loss.

Stage 1 pre-trains each branch's slot attention by reconstructing its own input features from
the slots with a small transformer decoder (Seitzer et al. 2023, "DINOSAUR"): a set of learned
position queries attends to the slots and predicts the CLIP feature at each position; the loss is
the mean squared error. The object branch reconstructs each sampled frame's ``G×G`` features from
that frame's ``N_s`` slots; the event branch reconstructs each pooled position's ``T`` features
over time from its ``N_f`` slots (padding masked out).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BRANCHES = ("slow", "fast")


def _heads(dim: int) -> int:
    return next(h for h in (8, 4, 2, 1) if dim % h == 0)


class SlotDecoder(nn.Module):
    """Transformer decoder from slots to features: ``slots [M, K, D]`` → ``[M, Q, out_dim]``.

    ``num_queries`` learned position queries (self-attention among them, cross-attention to the
    slots, pre-LayerNorm). ``length`` (≤ num_queries, or more: the table is interpolated) decodes
    only the first positions; ``query_mask [M, Q]`` (True = real) masks padded queries.
    """

    def __init__(self, dim: int, out_dim: int, num_queries: int, layers: int = 2, mlp_ratio: int = 4):
        super().__init__()
        self.num_queries = num_queries
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        layer = nn.TransformerDecoderLayer(dim, _heads(dim), dim_feedforward=mlp_ratio * dim, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, out_dim))

    def forward(self, slots: torch.Tensor, length: int | None = None, query_mask: torch.Tensor | None = None):
        q = self.queries
        n = self.num_queries if length is None else length
        if n > q.shape[0]:
            q = F.interpolate(q.t().unsqueeze(0), size=n, mode="linear", align_corners=True)[0].t()
        q = q[:n].to(slots.dtype).unsqueeze(0).expand(slots.shape[0], -1, -1)
        pad = None if query_mask is None else ~query_mask
        h = self.decoder(q, slots, tgt_key_padding_mask=pad)
        return self.out(h)


class Reconstruction(nn.Module):
    """Stage-1 objective over a :class:`SlowFastSlots` connector's slot branches.

    ``forward(slow [B, t_d, G, G, Dv], fast list of [T_i, g, g, Dv])`` → dict with ``loss`` (sum of
    the branches' MSE) and each branch's MSE (detached).
    """

    def __init__(self, connector: nn.Module, branches=BRANCHES, decoder_layers: int = 2):
        super().__init__()
        self.connector = connector
        self.branches = tuple(branches)
        d, dv = connector.slot_dim, connector.vision_dim
        self.decoders = nn.ModuleDict()
        if "slow" in self.branches:
            self.decoders["slow"] = SlotDecoder(d, dv, connector.grid_size**2, decoder_layers)
        if "fast" in self.branches:
            self.decoders["fast"] = SlotDecoder(d, dv, connector.max_frames, decoder_layers)

    def trainable_parameters(self):
        """The slot branches being pre-trained (input projection, slot attention, position table)
        and the decoders; the S/F-Proj and Proj are not part of stage 1."""
        c = self.connector
        mods = [self.decoders]
        if "slow" in self.branches:
            mods += [c.slow_in, c.slow_slots]
        if "fast" in self.branches:
            mods += [c.fast_in, c.fast_slots]
        params = [p for m in mods for p in m.parameters()]
        if "slow" in self.branches:
            params.append(c.slow_pos)
        if "fast" in self.branches:
            params.append(c.fast_pos)
        return params

    def forward(self, slow: torch.Tensor, fast: list[torch.Tensor]) -> dict:
        c = self.connector
        out = {}
        total = 0.0
        if "slow" in self.branches:
            b, t, g, _, dv = slow.shape
            slots, _ = c.encode_slow(slow)  # [B, t_d, N_s, D]
            rec = self.decoders["slow"](slots.reshape(b * t, slots.shape[2], slots.shape[3]))  # [B*t, G*G, Dv]
            mse = F.mse_loss(rec.float(), slow.reshape(b * t, g * g, dv).float())
            out["slow"] = mse.detach()
            total = total + mse
        if "fast" in self.branches:
            slots, _, lengths = c.encode_fast(fast)  # [B, P, N_f, D]
            b, p, k, d = slots.shape
            t_max = int(lengths.max())
            target = torch.zeros(b, p, t_max, c.vision_dim, device=slots.device)
            mask = torch.zeros(b, p, t_max, dtype=torch.bool, device=slots.device)
            for i, f in enumerate(fast):
                n = f.shape[0]
                target[i, :, :n] = f.reshape(n, p, -1).transpose(0, 1).float()
                mask[i, :, :n] = True
            rec = self.decoders["fast"](slots.reshape(b * p, k, d), length=t_max,
                                        query_mask=mask.reshape(b * p, t_max))
            err = (rec.float().reshape(b, p, t_max, -1) - target).pow(2).mean(-1)
            mse = (err * mask).sum() / mask.sum()
            out["fast"] = mse.detach()
            total = total + mse
        out["loss"] = total
        return out


class ConnectorForward(nn.Module):
    """The trainable part of stages 2/3 as one module (what DDP wraps): cached features → the
    connector's video tokens ``[B, L, H_llm]`` (fp32)."""

    def __init__(self, connector: nn.Module):
        super().__init__()
        self.connector = connector

    def trainable_parameters(self):
        return list(self.connector.parameters())

    def forward(self, slow: torch.Tensor, fast: list[torch.Tensor]) -> torch.Tensor:
        c = self.connector
        # The pooling baseline has no branches (it reads both inputs): no use_slow / use_fast.
        return c(slow=slow if getattr(c, "use_slow", True) else None, fast=fast if getattr(c, "use_fast", True) else None)
