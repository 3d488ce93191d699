"""The three-stage Slot-VLM training loop over the feature cache.

* stage 1 — slot reconstruction (:class:`~slotvlm.train.objectives.Reconstruction`) of the chosen
  branches (default both), AdamW lr 1e-4;
* stage 2 — one branch (``branch="slow"`` object-only, or ``"fast"`` event-only) + its S/F-Proj + Proj
  instruction-tuned with the answer-token loss of the frozen LLM (lr 2e-5, cosine, batch 40);
* stage 3 — both branches jointly, same loss.

CLIP is not run at all (features come from the cache) and the LLM is frozen. On CUDA: bf16
autocast and gradient checkpointing of the LLM. Under torchrun: DDP over the trainable module
(gloo on CPU, NCCL on CUDA); ``fsdp=True`` additionally shards the frozen LLM with FSDP2.

Batching: ``batch_size`` is the global batch of one optimizer step; each rank runs
``grad_accum`` micro-batches of ``batch_size / (world_size * grad_accum)`` examples. The data order
is a pure function of ``(seed, epoch)`` and the step, so a resumed run sees exactly the batches the
uninterrupted run would have, and with the optimizer, scheduler and RNG states restored it
produces the same losses bit for bit.

Output folder::

    OUT/config.json, OUT/connector.safetensors         the result (SlotVLM.from_pretrained(OUT))
    OUT/stage1_decoders.safetensors                      stage 1 only: the reconstruction decoders
    OUT/log.jsonl                                        one line per step: loss, lr, samples/s, ...
    OUT/checkpoints/step_000100/                         trainable.safetensors, optimizer.{json,safetensors},
                                                         scheduler.json, rng_rank<r>.{json,safetensors},
                                                         state.json
    OUT/train_args.json

Checkpoints hold only safetensors and JSON (see :mod:`slotvlm.train._state`): resuming from a
folder someone else wrote cannot run code, and a corrupt or crafted file stops the resume with a
``ValueError`` naming it. Every file of the run is written to a ``.tmp`` name and renamed into
place, so a crash or a full disk leaves either the old file or the new one; a failed checkpoint
write removes its ``.tmp`` folder and raises ``OSError`` saying what happened.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .. import distributed
from ..data.features import FeatureCache
from ..data.instruct import collate_features, load_instructions
from ._state import CheckpointError, load_state, save_state
from .objectives import BRANCHES, ConnectorForward, Reconstruction

DEFAULT_LR = {1: 1e-4, 2: 2e-5, 3: 2e-5}
CKPT_DIR = "checkpoints"
LOG = "log.jsonl"


@dataclass
class TrainConfig:
    """Options of one training run (the CLI's flags; see ``slotvlm train --help``)."""

    stage: int
    model: list[str]
    features: str
    out: str
    data: str | None = None
    branch: str | None = None
    epochs: int = 3
    lr: float | None = None
    batch_size: int = 40
    grad_accum: int = 1
    max_steps: int | None = None
    warmup: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    save_every: int | None = None
    keep_checkpoints: int = 2
    resume: bool = False
    stop_after: int | None = None
    fsdp: bool = False
    device: str | None = None
    dtype: str | None = None
    backend: str | None = None
    gradient_checkpointing: bool | None = None
    decoder_layers: int = 2
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def validate(self) -> "TrainConfig":
        if self.stage not in (1, 2, 3):
            raise ValueError(f"stage must be 1, 2 or 3, got {self.stage!r}")
        if self.branch not in (None, *BRANCHES):
            raise ValueError(f"branch must be 'slow' or 'fast', got {self.branch!r}")
        if self.stage == 2 and self.branch is None:
            raise ValueError("stage 2 trains one branch: pass branch='slow' (objects) or 'fast' (events)")
        if self.stage == 3 and self.branch is not None:
            raise ValueError(f"stage 3 trains both branches; branch must not be given, got {self.branch!r}")
        if self.stage in (2, 3) and not self.data:
            raise ValueError(f"stage {self.stage} needs data (an instruction JSON file), got {self.data!r}")
        for name in ("epochs", "batch_size", "grad_accum", "keep_checkpoints", "decoder_layers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("max_steps", "save_every", "stop_after"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ValueError(f"{name} must be None or a positive int, got {v!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup must be a fraction in [0, 1), got {self.warmup!r}")
        if isinstance(self.model, str):
            self.model = [self.model]
        if not self.model:
            raise ValueError("model must name at least one model folder")
        return self

    @property
    def branches(self) -> tuple[str, ...]:
        return (self.branch,) if self.branch else BRANCHES


# ------------------------------------------------------------------------------------------ model
def load_model(cfg: TrainConfig, device: torch.device):
    """Build the Slot-VLM for this stage: the config of ``cfg.model[0]`` with the stage's branches
    switched on, then the connector weights of every folder in ``cfg.model`` loaded in order (later
    folders override earlier ones; weights of branches this stage does not build are skipped)."""
    from safetensors.torch import load_file  # noqa: PLC0415

    from ..model import SlotVLM, SlotVLMConfig  # noqa: PLC0415
    from ..model.config import CONFIG_NAME, LEGACY_CONFIG_NAME, WEIGHTS_NAME  # noqa: PLC0415
    from ..model.modeling import parse_dtype  # noqa: PLC0415

    from .._atomic import recover  # noqa: PLC0415

    for d in cfg.model:
        recover(d)  # an interrupted save into the folder is finished or discarded first
        if not any(os.path.isfile(os.path.join(d, n)) for n in (CONFIG_NAME, LEGACY_CONFIG_NAME)):
            raise ValueError(f"model={d!r} is not a Slot-VLM model folder (no {CONFIG_NAME}); create one with `slotvlm init`")
    base = SlotVLMConfig.load(cfg.model[0])
    if base.connector != "slowfast" and cfg.stage == 1:
        raise ValueError(f"stage 1 pre-trains slot attention; model {cfg.model[0]!r} has connector={base.connector!r}")
    branches = cfg.branches
    mcfg = base.replace(use_slow="slow" in branches, use_fast="fast" in branches)
    model = SlotVLM.from_config(mcfg, device=device, dtype=parse_dtype(cfg.dtype), backend=cfg.backend, seed=cfg.seed)
    own = model.connector.state_dict()
    loaded: set[str] = set()
    for d in cfg.model:
        path = os.path.join(d, WEIGHTS_NAME)
        if not os.path.isfile(path):
            continue
        state = {k: v for k, v in load_file(path).items() if k in own}
        for k, v in state.items():
            if v.shape != own[k].shape:
                raise ValueError(f"model={d!r}: weight {k} has shape {tuple(v.shape)}, this model needs {tuple(own[k].shape)}")
        model.connector.load_state_dict(state, strict=False)
        loaded |= set(state)
    fresh = sorted(set(own) - loaded)
    return model, fresh


# ------------------------------------------------------------------------------------------ data
class StepData:
    """Deterministic batches: example ids of step ``s`` for rank ``r``, micro-batch ``a``."""

    def __init__(self, n: int, batch_size: int, world: int, grad_accum: int, seed: int):
        if batch_size % (world * grad_accum):
            raise ValueError(f"batch_size={batch_size} must be divisible by world_size*grad_accum = {world}*{grad_accum}")
        if n < batch_size:
            raise ValueError(f"the data set has {n} examples, fewer than one batch (batch_size={batch_size})")
        self.n, self.batch, self.world, self.accum, self.seed = n, batch_size, world, grad_accum, seed
        self.micro = batch_size // (world * grad_accum)
        self.steps_per_epoch = n // batch_size  # the last partial batch of an epoch is dropped
        self._order: tuple[int, list[int]] | None = None

    def order(self, epoch: int) -> list[int]:
        if self._order is None or self._order[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(self.n, generator=g).tolist())
        return self._order[1]

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        epoch, within = divmod(step, self.steps_per_epoch)
        batch = self.order(epoch)[within * self.batch : (within + 1) * self.batch]
        m = self.micro
        return [batch[(rank * self.accum + a) * m : (rank * self.accum + a + 1) * m] for a in range(self.accum)]


def _cosine(total: int, warmup_steps: int):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        p = (step - warmup_steps) / max(1, total - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, p)))
    return f


# ------------------------------------------------------------------------------------------ RNG
def _rng_state(device: torch.device) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ------------------------------------------------------------------------------------------ checkpoints
def _trainable_state(module: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def list_checkpoints(out: str) -> list[str]:
    """The complete checkpoints of ``out``, oldest first. A ``step_N.old`` (the previous checkpoint
    of the same step, set aside while a new ``step_N`` was renamed in) stands for ``step_N`` when a
    kill came between the two renames."""
    root = os.path.join(out, CKPT_DIR)
    if not os.path.isdir(root):
        return []
    entries = set(os.listdir(root))
    found = {}
    for n in entries:
        step = n[5:-4] if n.endswith(".old") else n[5:]
        if n.startswith("step_") and step.isdigit() and os.path.isfile(os.path.join(root, n, "state.json")):
            if not n.endswith(".old") or f"step_{step}" not in entries:
                found[int(step)] = os.path.join(root, n)
    return [found[s] for s in sorted(found)]


def save_checkpoint(out, step, module, opt, sched, device, rank, world, meta, keep) -> str:
    """All ranks call this. Rank 0 writes the weights/optimizer/scheduler, every rank its RNG state,
    into ``step_N.tmp``; after a barrier rank 0 renames it to ``step_N`` (a crash leaves only a
    ``.tmp`` folder, which resume ignores). A write that fails (disk full, permissions) removes the
    ``.tmp`` folder and raises ``OSError`` naming the checkpoint."""
    from safetensors.torch import save_file  # noqa: PLC0415

    from .._atomic import fsync_path  # noqa: PLC0415

    root = os.path.join(out, CKPT_DIR)
    final = os.path.join(root, f"step_{step:06d}")
    tmp = final + ".tmp"
    try:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        distributed.barrier()
        save_state(_rng_state(device), tmp, f"rng_rank{rank}")
        if rank == 0:
            save_file(_trainable_state(module), os.path.join(tmp, "trainable.safetensors"))
            save_state(opt.state_dict(), tmp, "optimizer")
            save_state(sched.state_dict(), tmp, "scheduler")
        distributed.barrier()
        if rank == 0:
            with open(os.path.join(tmp, "state.json"), "w") as f:
                json.dump({**meta, "step": step, "world_size": world}, f, indent=1)
            for name in os.listdir(tmp):  # durable before it becomes visible
                fsync_path(os.path.join(tmp, name))
            fsync_path(tmp)
            aside = final + ".old"
            if os.path.isdir(final):  # the same step again: keep the old one until the new one is in
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(final, aside)
            os.replace(tmp, final)
            fsync_path(root)
            shutil.rmtree(aside, ignore_errors=True)
            for old in list_checkpoints(out)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(e.errno, f"could not write checkpoint {final!r} (step {step}): {e.strerror or e}; "
                      f"its partial .tmp folder was removed, earlier checkpoints are intact") from e
    distributed.barrier()
    return final


def load_checkpoint(path, module, opt, sched, device, rank, world, meta) -> int:
    from safetensors.torch import load_file  # noqa: PLC0415

    state_path = os.path.join(path, "state.json")
    try:
        with open(state_path, encoding="utf-8") as f:
            state = json.load(f)
        int(state["step"]), int(state["world_size"])
    except (OSError, ValueError, TypeError, KeyError, RecursionError) as e:
        raise CheckpointError(f"checkpoint file {state_path!r} is corrupt: {type(e).__name__}: {e}"[:500]) from None
    if state["world_size"] != world:
        raise ValueError(f"checkpoint {path!r} was written by {state['world_size']} processes; resume it with "
                         f"the same number for an exact continuation (got {world})")
    for k in ("stage", "branches", "data_hash", "batch_size", "grad_accum", "seed", "total_steps"):
        if state.get(k) != meta.get(k):
            raise ValueError(f"cannot resume from {path!r}: {k} was {state.get(k)!r}, now {meta.get(k)!r}")
    weights = os.path.join(path, "trainable.safetensors")
    try:
        module.load_state_dict(load_file(weights, device=str(device)))
    except Exception as e:  # noqa: BLE001  (safetensors' own error types, or a state_dict mismatch)
        raise CheckpointError(f"checkpoint file {weights!r} cannot be loaded: {type(e).__name__}: {e}"[:500]) from None
    for name, target, dev in (("optimizer", opt, device), ("scheduler", sched, None), (f"rng_rank{rank}", None, None)):
        value = load_state(path, name, device=dev)
        try:
            if target is None:
                _set_rng_state(value, device)
            else:
                target.load_state_dict(value)
        except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as e:
            raise CheckpointError(f"checkpoint file {os.path.join(path, name + '.json')!r} does not hold a valid "
                                  f"{name} state: {type(e).__name__}: {e}"[:500]) from None
    return int(state["step"])


# ------------------------------------------------------------------------------------------ loop
def _data_hash(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def _shard_llm(llm: torch.nn.Module) -> None:
    """FSDP2: shard the frozen LLM's decoder layers across ranks (each layer's weights are gathered
    just for its forward/backward). The input embedding, final norm and LM head stay replicated:
    ``SlotVLM.build_inputs`` calls the embedding outside the LLM's forward (about 4 % of a 7B model)."""
    from torch.distributed.fsdp import fully_shard  # noqa: PLC0415

    layers = getattr(getattr(llm, "model", llm), "layers", None)
    if layers is None:
        raise ValueError("fsdp: the LLM has no .model.layers to shard")
    for layer in layers:
        fully_shard(layer)


def train(cfg: TrainConfig) -> dict:
    """Run one stage. Returns ``{"steps", "final_loss", "out"}`` (on every rank)."""
    from tqdm import tqdm  # noqa: PLC0415

    cfg.validate()
    rank, world, device = distributed.init(cfg.device)
    os.makedirs(cfg.out, exist_ok=True)
    # Same seed on every rank for the model's initialisation; per-rank streams after that.
    torch.manual_seed(cfg.seed)
    model, fresh = load_model(cfg, device)
    cache = FeatureCache(cfg.features)
    if cfg.stage == 1:
        if cfg.data:
            examples, dstats = load_instructions(cfg.data, cache)
            keys = sorted({e.video_id for e in examples})
        else:
            keys, dstats = sorted(cache.keys), {}
        items = keys
        objective = Reconstruction(model.connector, cfg.branches, cfg.decoder_layers).to(device)
        model.connector.requires_grad_(False)
        params = objective.trainable_parameters()
        for p in params:
            p.requires_grad_(True)
    else:
        examples, dstats = load_instructions(cfg.data, cache)
        items = examples
        keys = [f"{e.video_id}\t{e.question}\t{e.answer}" for e in examples]
        objective = ConnectorForward(model.connector)
        params = objective.trainable_parameters()
    module = objective
    data = StepData(len(items), cfg.batch_size, world, cfg.grad_accum, cfg.seed)
    # --max-steps, when given, is the length of the run (overriding --epochs), as in HF Trainer.
    total = cfg.max_steps if cfg.max_steps is not None else data.steps_per_epoch * cfg.epochs
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.stage]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine(total, int(cfg.warmup * total)))
    cuda = device.type == "cuda"
    grad_ckpt = False
    if cfg.stage > 1:
        grad_ckpt = cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else cuda
        if grad_ckpt:
            model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.llm.config.use_cache = False
        if cfg.fsdp:
            if world < 2:
                raise ValueError("fsdp shards the LLM across processes: run under torchrun with >= 2 processes")
            _shard_llm(model.llm)
    ddp = None
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if cuda else None)
    meta = {"stage": cfg.stage, "branches": list(cfg.branches), "data_hash": _data_hash(keys),
            "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "seed": cfg.seed, "total_steps": total}
    step = 0
    ckpts = list_checkpoints(cfg.out)
    log_path = os.path.join(cfg.out, LOG)
    if cfg.resume and ckpts:
        step = load_checkpoint(ckpts[-1], module, opt, sched, device, rank, world, meta)
    else:
        torch.manual_seed(cfg.seed * 7919 + rank)
        random.seed(cfg.seed * 7919 + rank)
        np.random.seed((cfg.seed * 7919 + rank) % 2**32)
    if rank == 0:
        _truncate_log(log_path, step)
        _write_atomic(os.path.join(cfg.out, "train_args.json"), lambda tmp: _dump_json(
            {**asdict(cfg), "world_size": world, "data_stats": dstats, "fresh_weights": fresh, "lr_used": lr,
             "total_steps": total}, tmp))
    distributed.barrier()

    model.train()
    if grad_ckpt:
        model.llm.train()  # HF only checkpoints in training mode; LLaMA has no dropout by default
    runner = ddp if ddp is not None else module
    save_every = cfg.save_every or max(1, total)
    stop = total if cfg.stop_after is None else min(total, cfg.stop_after)
    bar = tqdm(total=total, initial=step, desc=f"train stage {cfg.stage}", unit="step",
               disable=not (cfg.progress and rank == 0))
    last_loss = float("nan")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    while step < stop:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        micro = data.micro_batches(step, rank)
        losses, parts = [], {}
        for a, ids in enumerate(micro):
            sync = ddp is None or a == len(micro) - 1
            ctx = ddp.no_sync() if (ddp is not None and not sync) else _null()
            with ctx:
                with autocast:
                    if cfg.stage == 1:
                        batch = collate_features([cache.load(items[i]) for i in ids], device)
                        out = runner(batch["slow"], batch["fast"])
                        loss = out["loss"]
                        for k in cfg.branches:
                            parts[k] = parts.get(k, 0.0) + float(out[k]) / len(micro)
                    else:
                        exs = [items[i] for i in ids]
                        batch = collate_features([cache.load(e.video_id) for e in exs], device)
                        embeds = runner(batch["slow"], batch["fast"])
                        llm_dtype = model.llm.get_input_embeddings().weight.dtype
                        loss = model(video_embeds=embeds.to(llm_dtype), questions=[e.question for e in exs],
                                     answers=[e.answer for e in exs]).loss
                (loss / len(micro)).backward()
            losses.append(float(loss.detach()))
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm) if cfg.max_grad_norm else None
        cur_lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        step += 1
        vals = distributed.all_reduce_sum([sum(losses) / len(losses)] + [parts.get(k, 0.0) for k in cfg.branches])
        last_loss = vals[0] / world
        dt = time.perf_counter() - t0
        rec = {"step": step, "epoch": (step - 1) // data.steps_per_epoch, "loss": last_loss, "lr": cur_lr,
               "samples_per_s": cfg.batch_size / dt, "step_time_s": dt,
               "grad_norm": None if grad_norm is None else float(grad_norm)}
        if cfg.stage == 1:
            rec.update({f"mse_{k}": v / world for k, v in zip(cfg.branches, vals[1:])})
        if rank == 0:
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
            bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{cur_lr:.2e}", sps=f"{rec['samples_per_s']:.1f}")
            bar.update(1)
        if step % save_every == 0 or step == total or step == stop:
            save_checkpoint(cfg.out, step, module, opt, sched, device, rank, world, meta, cfg.keep_checkpoints)
    bar.close()
    if step >= total and rank == 0:
        _save_result(cfg, model, module)
    distributed.barrier()
    distributed.shutdown()
    return {"steps": step, "final_loss": last_loss, "out": cfg.out, "total_steps": total}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _dump_json(obj, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)


def _write_atomic(path: str, write) -> None:
    """``write(tmp)`` then rename ``tmp`` to ``path``; on failure (a full disk) no ``.tmp`` is left."""
    from .._atomic import fsync_path  # noqa: PLC0415

    tmp = path + ".tmp"
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(os.path.dirname(os.path.abspath(path)))
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _truncate_log(path: str, step: int) -> None:
    """Keep the log lines of steps <= ``step`` (a resumed run rewrites what came after)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(keep)

    _write_atomic(path, write)


def _save_result(cfg: TrainConfig, model, module) -> None:
    from safetensors.torch import save_file  # noqa: PLC0415

    model.save_pretrained(cfg.out)
    if cfg.stage == 1:
        state = {k: v.detach().to("cpu").contiguous() for k, v in module.decoders.state_dict().items()}
        _write_atomic(os.path.join(cfg.out, "stage1_decoders.safetensors"), lambda tmp: save_file(state, tmp))


def read_log(out: str) -> list[dict]:
    """The per-step records of ``OUT/log.jsonl``."""
    with open(os.path.join(out, LOG), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
