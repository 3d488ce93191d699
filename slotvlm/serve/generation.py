"""Batched, streamable decoding for a Slot-VLM, composed from the model's public parts.

``SlotVLM.generate`` runs the LLM's ``generate`` on a whole batch with one set of sampling
settings and returns only finished strings. A server needs more: each row of a batch has its own
``max_tokens`` / ``temperature`` / ``top_p`` / ``seed`` / ``stop``, rows stream their text as it
is produced, a cancelled row stops early, and a finished row leaves the batch. :func:`decode`
does that with the LLM's forward pass and KV cache, using the model's own ``build_inputs`` (the
same prompt and left padding as ``SlotVLM.generate``) and transformers' logits warpers.

For one row, greedy or seeded sampling gives the same tokens as ``SlotVLM.generate`` with
``do_sample=temperature > 0, temperature=..., top_p=..., top_k=0`` after ``torch.manual_seed(seed)``:
each row draws from its own ``torch.Generator`` seeded with ``seed``, so its answer does not
depend on the other rows of its batch.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

__all__ = ["GenRequest", "GenResult", "decode", "TextStream"]


@dataclass
class GenRequest:
    """One row: a question about a video (``video_embeds [L, H]``), earlier turns, sampling settings.

    ``temperature == 0`` is greedy. ``stop``: strings that end the answer (not included).
    ``on_text(delta)`` is called with each new piece of answer text; ``cancelled()`` is polled
    every step, a row whose callable returns True stops with ``finish_reason="cancelled"``.
    """

    video_embeds: torch.Tensor
    question: str
    history: list[tuple[str, str]] = field(default_factory=list)
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()
    on_text: Callable[[str], None] | None = None
    cancelled: Callable[[], bool] | None = None
    system: str | None = None  # the conversation's system prompt (None: the template's default)


@dataclass
class GenResult:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string), "length", "cancelled"
    prompt_tokens: int  # including the video tokens
    completion_tokens: int
    video_tokens: int


class TextStream:
    """Incremental detokenisation: ``update(ids)`` returns the text that became final since the
    last call, so that the pieces concatenate to ``decode(ids).strip()`` cut at the first stop
    string (what ``SlotVLM.generate`` returns, cut). Text that may still change — a partial UTF-8
    character, trailing whitespace, a possible start of a stop string — is held back."""

    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.sent = ""
        self.stopped = False

    def text(self, ids: list[int]) -> tuple[str, bool]:
        """(the answer so far, cut at a stop string; whether a stop string was found)."""
        raw = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = min((i for i in (raw.find(s) for s in self.stop) if i >= 0), default=-1)
        return (raw[:cut], True) if cut >= 0 else (raw, False)

    def update(self, ids: list[int], final: bool = False) -> str:
        text, hit = self.text(ids)
        self.stopped = hit
        final = final or hit
        text = text.lstrip()
        if not final:
            text = text.rstrip().rstrip("\ufffd")
            hold = max((len(s) - 1 for s in self.stop), default=0)
            if hold:
                text = text[: max(len(self.sent), len(text) - hold)]
        else:
            text = text.strip()
        if not text.startswith(self.sent):  # the decoded prefix changed (rare): emit nothing new
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta


def _cache_kwarg(llm) -> str:
    params = inspect.signature(llm.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _new_cache(llm):
    from transformers import DynamicCache  # noqa: PLC0415

    try:
        return DynamicCache(config=llm.config)
    except TypeError:  # older transformers
        return DynamicCache()


def _warp(scores: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """transformers' own warpers, in ``generate``'s order (temperature, then top-p)."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper  # noqa: PLC0415

    if temperature != 1.0:
        scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return scores


@torch.no_grad()
def decode(model, requests: Sequence[GenRequest]) -> list[GenResult]:
    """Generate answers for ``requests`` as one batch (prompts left-padded by ``model.build_inputs``).

    Args:
        model: a :class:`slotvlm.SlotVLM` (eval mode).
        requests: rows; each ``video_embeds`` is ``[L, H]`` (all rows the same L, as one connector
            gives).
    Returns:
        one :class:`GenResult` per request, in order.
    """
    if not requests:
        return []
    llm, tok = model.llm, model.tokenizer
    embeds = torch.stack([r.video_embeds for r in requests], 0)  # [B, L, H]
    inputs = model.build_inputs(embeds, [r.question for r in requests], history=[list(r.history) for r in requests],
                                system=[r.system for r in requests])
    mask = inputs["attention_mask"]  # [B, S], left padded
    dev = mask.device
    prompt_lens = mask.sum(1).tolist()
    streams = [TextStream(tok, r.stop) for r in requests]
    gens = []
    for r in requests:
        g = None
        if r.temperature > 0:
            g = torch.Generator(device=dev)
            g.manual_seed(int(r.seed) if r.seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
        gens.append(g)
    ids: list[list[int]] = [[] for _ in requests]
    finish: list[str | None] = [None] * len(requests)
    active = list(range(len(requests)))  # rows still in the batch, in cache order
    eos = tok.eos_token_id
    eos_set = set(eos) if isinstance(eos, (list, tuple)) else {eos}

    cache = _new_cache(llm)
    ckw = _cache_kwarg(llm)
    # only the last position's logits are needed (saves a [B, S, vocab] tensor on the prompt pass)
    keep_last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(llm.forward).parameters else {}
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    step_in = dict(inputs_embeds=inputs["inputs_embeds"], attention_mask=mask, position_ids=pos)
    for r_i, r in enumerate(requests):
        if r.max_tokens <= 0:
            finish[r_i] = "length"
    active = [i for i in active if finish[i] is None]
    if active and len(active) < len(requests):
        sel = torch.tensor(active, device=dev)
        step_in = {k: v[sel] for k, v in step_in.items()}
        mask = mask[sel]
    while active:
        out = llm(**step_in, **{ckw: cache}, use_cache=True, **keep_last)
        logits = out.logits[:, -1, :].float()
        next_tokens = logits.argmax(-1).tolist()  # greedy rows (one device sync for the batch)
        for row, i in enumerate(active):
            r = requests[i]
            if r.temperature > 0:  # each sampled row draws from its own generator
                probs = torch.softmax(_warp(logits[row : row + 1], r.temperature, r.top_p), -1)
                next_tokens[row] = int(torch.multinomial(probs, 1, generator=gens[i]).item())
        keep = []
        for row, i in enumerate(active):
            r, t = requests[i], next_tokens[row]
            if r.cancelled is not None and r.cancelled():
                finish[i] = "cancelled"
                continue
            done = t in eos_set
            if not done:
                ids[i].append(t)
            if done:
                finish[i] = "stop"
            elif len(ids[i]) >= r.max_tokens:
                finish[i] = "length"
            delta = streams[i].update(ids[i], final=finish[i] is not None)
            if streams[i].stopped:
                finish[i] = "stop"
            if delta and r.on_text is not None:
                r.on_text(delta)
            if finish[i] is None:
                keep.append(row)
        if not keep:
            break
        if len(keep) < len(active):
            sel = torch.tensor(keep, device=dev)
            cache.batch_select_indices(sel)
            mask, pos = mask[sel], step_in["position_ids"][sel]
        else:
            pos = step_in["position_ids"]
        tokens = torch.tensor([next_tokens[row] for row in keep], device=dev, dtype=torch.long)
        active = [active[row] for row in keep]
        mask = torch.cat([mask, mask.new_ones(len(keep), 1)], 1)
        step_in = dict(input_ids=tokens[:, None], attention_mask=mask, position_ids=pos[:, -1:] + 1)
    results = []
    for i, r in enumerate(requests):
        text, _ = streams[i].text(ids[i])
        results.append(GenResult(text=text.strip(), finish_reason=finish[i] or "length",
                                 prompt_tokens=int(prompt_lens[i]), completion_tokens=len(ids[i]),
                                 video_tokens=int(r.video_embeds.shape[0])))
    return results
