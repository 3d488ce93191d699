"""``SlotVLM``: frozen CLIP vision tower → trainable connector → frozen causal LLM.

A transformers ``PreTrainedModel`` registered with ``AutoConfig`` / ``AutoModel`` (model type
``slotvlm``). A saved model is small: ``config.json`` (sizes + references to the base models, hub ids
or paths relative to the folder), ``connector.safetensors`` (the trainable weights) and ``README.md``
(a generated model card). Example::

    from slotvlm import SlotVLM, SlotVLMConfig
    model = SlotVLM.from_config(SlotVLMConfig())            # CLIP ViT-L/14 + Vicuna-7B, fresh slots
    print(model.answer("clip.mp4", "What is the man doing?"))
    model.save_pretrained("out/")                           # config + connector weights + model card
    model = SlotVLM.from_pretrained("out/")                 # or a hub id: "org/slotvlm-7b"
    model.push_to_hub("org/slotvlm-7b")
"""
from __future__ import annotations

import importlib.util
import json
import os
from typing import Sequence

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

from .._checks import check_tensor, describe
from ..conversation import VIDEO_TOKEN, get_template, reply_token_ids
from .config import (
    CONFIG_NAME, LEGACY_CONFIG_NAME, REFERENCE_FIELDS, WEIGHTS_NAME, SlotVLMConfig, check_reference, looks_local,
    resolve_reference,
)
from .slowfast import build_connector

IGNORE_INDEX = -100
CARD_NAME = "README.md"

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def parse_dtype(dtype) -> torch.dtype | None:
    """``None`` / a ``torch.dtype`` / a name (``"bf16"``, ``"float32"``, ...) → ``torch.dtype``."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or a torch.dtype, got {dtype!r}")


def resolve_device_dtype(device=None, dtype=None) -> tuple[torch.device, torch.dtype]:
    """Defaults: CUDA when available; bf16 for the frozen base models on CUDA, fp32 on CPU."""
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = parse_dtype(dtype)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, dtype


def _dtype_kwarg() -> str:
    import transformers  # noqa: PLC0415

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def _llm_attn_implementation(device: torch.device, dtype: torch.dtype) -> str:
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and importlib.util.find_spec("flash_attn"):
        return "flash_attention_2"
    return "sdpa"


#: Keywords that transformers' ``AutoModel`` / ``PreTrainedModel.from_pretrained`` forward (5.x) and that
#: mean nothing for a Slot-VLM folder (one small safetensors file, base models loaded by reference):
#: accepted and ignored, so ``AutoModel.from_pretrained(folder)`` works across the supported range.
IGNORED_LOAD_KWARGS = frozenset({
    "trust_remote_code", "adapter_kwargs", "adapter_name", "_from_auto", "_from_pipeline", "_commit_hash",
    "proxies", "resume_download", "mirror", "user_agent", "code_revision", "use_safetensors", "variant",
    "low_cpu_mem_usage", "offload_folder", "offload_state_dict", "offload_buffers", "max_memory",
    "use_auth_token", "output_loading_info", "ignore_mismatched_sizes", "weights_only", "key_mapping",
    "tp_plan", "tp_size", "device_mesh", "distributed_config", "gguf_file", "quantization_config",
    "attn_implementation", "experts_implementation", "state_dict", "from_tf", "from_flax", "kernel_config",
    "use_kernels", "generation_config",
})


def resolve_model_folder(name, *, revision: str | None = None, cache_dir=None, token=None,
                         local_files_only: bool | None = None, subfolder: str | None = None,
                         force_download: bool = False) -> str:
    """A local Slot-VLM folder for ``name``: the folder itself, or the hub snapshot of the repo ``name``
    (config, connector weights, model card, and any base model the config keeps inside the repo as
    ``./sub``), downloaded once into the huggingface_hub cache. ``HF_HUB_OFFLINE=1`` or
    ``local_files_only=True`` uses the cache only. A name that looks like a local path
    (:func:`~slotvlm.model.config.looks_local`) and does not exist is a ``ValueError`` at once."""
    name = os.fspath(name)
    sub = (subfolder or "").strip("/")
    if sub and (os.path.isabs(sub) or ".." in sub.split("/")):
        raise ValueError(f"subfolder={subfolder!r} must be a relative path inside the model repo or folder")
    if os.path.isdir(name) and sub:
        if not os.path.isdir(os.path.join(name, sub)):
            raise ValueError(f"subfolder={subfolder!r} does not exist in model={name!r}")
        name = os.path.join(name, sub)
    if os.path.isdir(name):
        from .._atomic import recover  # noqa: PLC0415

        recover(name)  # an interrupted save_pretrained is finished or discarded before anything is read
        if not any(os.path.isfile(os.path.join(name, n)) for n in (CONFIG_NAME, LEGACY_CONFIG_NAME)):
            raise ValueError(f"model={name!r} is not a Slot-VLM model directory (no {CONFIG_NAME})")
        return name
    if looks_local(name) or os.path.exists(name):
        raise ValueError(f"model={name!r} looks like a local path but is not an existing directory "
                         f"(resolved to {os.path.abspath(os.path.expanduser(name))!r}); hub ids look like 'org/name'")
    from huggingface_hub import hf_hub_download, snapshot_download  # noqa: PLC0415
    from huggingface_hub.errors import HFValidationError  # noqa: PLC0415

    hub = dict(revision=revision, cache_dir=cache_dir, token=token)
    if local_files_only:
        hub["local_files_only"] = True
    if force_download:
        hub["force_download"] = True
    prefix = sub + "/" if sub else ""
    try:
        with open(hf_hub_download(name, CONFIG_NAME, subfolder=sub or None, **hub), encoding="utf-8") as f:
            saved = json.load(f)
        refs = [saved.get(k) for k in REFERENCE_FIELDS]
        inside = [r[2:].rstrip("/") + "/*" for r in refs if isinstance(r, str) and r.startswith("./")]
        patterns = [prefix + p for p in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, *inside)]
        return os.path.join(snapshot_download(name, allow_patterns=patterns, **hub), sub)
    except HFValidationError as exc:
        raise ValueError(f"model={name!r} is neither a local folder nor a valid hub id ({exc})") from None
    except (OSError, ValueError) as exc:  # not found, offline without a cached copy, no access
        raise ValueError(f"model={name!r}: not a local folder, and the hub gave no Slot-VLM there "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc


def _load_base_models(cfg: SlotVLMConfig, device: torch.device, dtype: torch.dtype, hub: dict):
    from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel  # noqa: PLC0415

    load = {_dtype_kwarg(): dtype, **hub}
    if device.type == "cuda" and importlib.util.find_spec("accelerate"):
        load["device_map"] = {"": str(device)}  # straight onto the GPU, no full copy in host memory
    vision = CLIPVisionModel.from_pretrained(cfg.vision_model, **load, attn_implementation="sdpa")
    llm = AutoModelForCausalLM.from_pretrained(
        cfg.llm_model, **load, attn_implementation=_llm_attn_implementation(device, dtype)
    )
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.llm_model, **hub)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    return vision, llm, tokenizer


class SlotVLM(PreTrainedModel):
    """A Slot-VLM: ``vision`` (CLIPVisionModel, frozen) → ``connector`` (trainable) → ``llm`` (frozen).

    Attributes: ``config`` (:class:`SlotVLMConfig`), ``vision``, ``llm``, ``tokenizer``,
    ``connector`` (:class:`SlowFastSlots` or a baseline), ``conversation`` (the prompt template: the
    tokenizer's chat template when it has one, else Vicuna v1). The connector is kept in fp32; its
    output is cast to the LLM's dtype. Build one with :meth:`from_config` (fresh connector) or
    :meth:`from_pretrained` (a saved folder or a hub id; ``transformers.AutoModel`` does the same).
    """

    config_class = SlotVLMConfig
    base_model_prefix = "slotvlm"
    main_input_name = "pixel_values"

    def __init__(self, config: SlotVLMConfig, vision: nn.Module | None = None, llm: nn.Module | None = None,
                 tokenizer=None, connector: nn.Module | None = None):
        if vision is None or llm is None or tokenizer is None or connector is None:
            raise ValueError("SlotVLM needs its vision tower, LLM, tokenizer and connector: build it with "
                             "SlotVLM.from_config(config) or SlotVLM.from_pretrained(folder_or_hub_id)")
        super().__init__(config)
        self.vision = vision
        self.llm = llm
        self.tokenizer = tokenizer
        self.connector = connector
        self.conversation = get_template(config.conv_template, tokenizer)
        for module in (self.vision, self.llm):
            module.requires_grad_(False)
            module.eval()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: SlotVLMConfig | dict, device=None, dtype=None, *, backend: str | None = None,
                    seed: int | None = None, **hub) -> "SlotVLM":
        """Load the base models named by ``config`` (hub id or local path) and build a fresh connector.

        Args:
            device: default CUDA when available, else CPU.
            dtype: dtype of the frozen base models (default bf16 on CUDA, fp32 on CPU).
            backend: slot-attention backend (``"auto"``/``"torch"``/``"triton"``, default ``$SLOTVLM_BACKEND``).
            seed: seed for the connector's initialisation (default: the global RNG).
            hub: ``cache_dir``, ``token``, ``local_files_only`` for base models given by hub id.
        """
        cfg = SlotVLMConfig.from_slot_dict(config) if isinstance(config, dict) else config.replace()
        cfg.validate()
        device, dtype = resolve_device_dtype(device, dtype)
        cfg.vision_model = check_reference("vision_model", cfg.vision_model)
        cfg.llm_model = check_reference("llm_model", cfg.llm_model)
        if cfg.tokenizer is not None:
            cfg.tokenizer = check_reference("tokenizer", cfg.tokenizer)
        vision, llm, tokenizer = _load_base_models(cfg, device, dtype, {k: v for k, v in hub.items() if v is not None})

        vc = vision.config
        if vc.image_size % vc.patch_size:
            raise ValueError(f"vision image_size={vc.image_size} is not a multiple of patch_size={vc.patch_size}")
        cfg.vision_hidden = vc.hidden_size
        cfg.grid_size = vc.image_size // vc.patch_size
        cfg.image_size = vc.image_size
        cfg.llm_hidden = llm.get_input_embeddings().embedding_dim
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                connector = build_connector(cfg, cfg.vision_hidden, cfg.llm_hidden, backend=backend)
        else:
            connector = build_connector(cfg, cfg.vision_hidden, cfg.llm_hidden, backend=backend)
        model = cls(cfg, vision, llm, tokenizer, connector.float())
        model.vision.to(device)
        model.llm.to(device)
        model.connector.to(device)
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, device=None, dtype=None,
                        backend: str | None = None, config: SlotVLMConfig | None = None, revision: str | None = None,
                        cache_dir=None, token=None, local_files_only: bool | None = None, **kwargs) -> "SlotVLM":
        """Restore a model written by :meth:`save_pretrained`, from a local folder or a hub id.

        Args:
            pretrained_model_name_or_path: a folder (``config.json`` + ``connector.safetensors``; folders
                of slotvlm 0.1 with ``slotvlm_config.json`` load too) or a hub repo id (downloaded once
                into the huggingface_hub cache; ``HF_HUB_OFFLINE=1`` reads the cache only).
            device, dtype, backend: as in :meth:`from_config` (``torch_dtype`` is accepted for ``dtype``).
            config: a :class:`SlotVLMConfig` to use instead of the saved one (``AutoModel`` passes it).
            revision, cache_dir, token, local_files_only, force_download: huggingface_hub download options.
            subfolder: the model lives in this sub-folder of the folder or hub repo (``AutoModel`` passes it).

        Other keywords that transformers' loaders forward (``proxies``, ``trust_remote_code``, ... see
        ``IGNORED_LOAD_KWARGS``) are accepted and ignored; anything else is a ``ValueError`` naming it.

        The base models are loaded from the references in the config: hub ids through the cache,
        ``./x`` / ``../x`` relative to the model folder (so a moved or copied folder still loads).
        """
        from safetensors.torch import load_file  # noqa: PLC0415

        dtype = dtype if dtype is not None else kwargs.pop("torch_dtype", None)
        device_map = kwargs.pop("device_map", None)  # transformers' spelling: one device only
        if device is None and isinstance(device_map, (str, torch.device)):
            device = device_map
        elif device_map is not None and not isinstance(device_map, (str, torch.device)):
            raise ValueError(f"device_map={device_map!r}: a Slot-VLM loads onto one device, pass device='cuda:0'")
        device = None if device == "auto" else device
        dtype = None if dtype == "auto" else dtype
        subfolder = kwargs.pop("subfolder", None) or None
        force_download = bool(kwargs.pop("force_download", False))
        for key in IGNORED_LOAD_KWARGS:
            kwargs.pop(key, None)
        if model_args or kwargs:
            raise ValueError(f"SlotVLM.from_pretrained got unexpected arguments: {list(model_args)} {sorted(kwargs)} "
                             f"(accepted: device, dtype, backend, config, revision, cache_dir, token, "
                             f"local_files_only, subfolder, force_download, torch_dtype, device_map; "
                             f"accepted and ignored: {', '.join(sorted(IGNORED_LOAD_KWARGS))})")
        folder = resolve_model_folder(pretrained_model_name_or_path, revision=revision, cache_dir=cache_dir,
                                      token=token, local_files_only=local_files_only, subfolder=subfolder,
                                      force_download=force_download)
        if isinstance(config, SlotVLMConfig):
            d = config.slot_dict()
            for k in REFERENCE_FIELDS:
                d[k] = resolve_reference(k, d[k], folder)
            cfg = SlotVLMConfig.from_slot_dict(d)
        else:
            cfg = SlotVLMConfig.load(folder)
        hub = dict(cache_dir=cache_dir, token=token, local_files_only=local_files_only)
        model = cls.from_config(cfg, device=device, dtype=dtype, backend=backend, **hub)
        weights = os.path.join(folder, WEIGHTS_NAME)
        if not os.path.isfile(weights):
            raise ValueError(f"model={pretrained_model_name_or_path!r} has a config but no {WEIGHTS_NAME}")
        state = load_file(weights, device=str(next(model.connector.parameters()).device))
        model.connector.load_state_dict(state, strict=True)
        model.config.name_or_path = str(pretrained_model_name_or_path)
        return model

    def save_pretrained(self, save_directory, *, push_to_hub: bool = False, license: str | None = None,
                        **kwargs) -> str:
        """Write ``config.json`` (local base-model paths relative to the folder), ``connector.safetensors``
        (the trainable parts only) and ``README.md`` (the model card, see :meth:`model_card`).

        If the folder holds a ``train_args.json`` of ``slotvlm train``, the stage it describes is
        appended to ``config.training`` (and so to the card). Other keywords of transformers'
        ``save_pretrained`` (``max_shard_size``, ``safe_serialization``...) are accepted and ignored:
        the connector is one small safetensors file.
        """
        from safetensors.torch import save_file  # noqa: PLC0415

        from .._atomic import commit_files, write_text  # noqa: PLC0415

        if push_to_hub:
            raise ValueError("use model.push_to_hub(repo_id) to upload")
        directory = os.fspath(save_directory)
        os.makedirs(directory, exist_ok=True)
        record = _training_record(directory)
        if record is not None and (not self.config.training or self.config.training[-1] != record):
            self.config.training = [*self.config.training, record]
        config = self.config.to_json_text(directory)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.connector.state_dict().items()}
        card = self.model_card(license=license, folder=directory)

        # one crash-safe set: a kill -9 at any moment leaves the old three files or the new three
        commit_files(directory, {
            WEIGHTS_NAME: lambda path: save_file(state, path, metadata={"format": "pt"}),
            CONFIG_NAME: lambda path: write_text(path, config),
            CARD_NAME: lambda path: write_text(path, card),
        })
        return directory

    def model_card(self, license: str | None = None, folder: str | None = None, repo_id: str | None = None) -> str:
        """The model card (``README.md``): YAML front matter (``base_model`` hub ids, ``tags``,
        ``license``, ``library_name``, ``pipeline_tag``) and a body with the base models, the token
        budget, the connector sizes, the training stages and data, and how to load it."""
        from .card import render_model_card  # noqa: PLC0415

        n = sum(p.numel() for p in self.connector.parameters())
        return render_model_card(self.config, trainable_params=n, license=license, folder=folder, repo_id=repo_id)

    def push_to_hub(self, repo_id: str, *, commit_message: str = "Upload Slot-VLM", private: bool | None = None,
                    token: str | None = None, revision: str | None = None, create_pr: bool = False,
                    license: str | None = None, api=None) -> str:
        """Upload what :meth:`save_pretrained` writes (config, connector weights, model card) to the hub
        repo ``repo_id`` (created if missing) in one commit; returns the commit URL.

        Base models given by hub id are referenced, not uploaded. Base models in local folders (e.g.
        the tiny ones of ``slotvlm init --tiny``) are uploaded into the repo as ``vision/``, ``llm/``
        (and ``tokenizer/``) and referenced as ``./vision`` etc., so ``from_pretrained(repo_id)``
        finds them. ``api``: a ``huggingface_hub.HfApi`` (default: one for ``$HF_ENDPOINT`` and ``token``).
        """
        import tempfile  # noqa: PLC0415

        from huggingface_hub import CommitOperationAdd, HfApi  # noqa: PLC0415

        api = api if api is not None else HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        cfg = self.config
        saved = {k: getattr(cfg, k) for k in REFERENCE_FIELDS}
        with tempfile.TemporaryDirectory() as tmp:
            try:
                links: dict[str, str] = {}
                for k, sub in zip(REFERENCE_FIELDS, ("vision", "llm", "tokenizer")):
                    ref = saved[k]
                    if ref is None or not os.path.isdir(ref):
                        continue
                    real = os.path.realpath(ref)
                    if real not in links:  # the LLM folder usually holds the tokenizer too
                        links[real] = os.path.join(tmp, sub)
                        os.symlink(real, links[real], target_is_directory=True)
                    setattr(cfg, k, links[real])
                self.save_pretrained(tmp, license=license)
                with open(os.path.join(tmp, CARD_NAME), "w", encoding="utf-8") as f:
                    f.write(self.model_card(license=license, folder=tmp, repo_id=repo_id))
            finally:
                for k, v in saved.items():
                    setattr(cfg, k, v)
            ops = []
            for root, _, files in os.walk(tmp, followlinks=True):
                for name in sorted(files):
                    path = os.path.join(root, name)
                    rel = os.path.relpath(path, tmp).replace(os.sep, "/")
                    if not rel.startswith(".") and "/." not in rel:  # skip .cache/, .gitattributes...
                        ops.append(CommitOperationAdd(path_in_repo=rel, path_or_fileobj=path))
            info = api.create_commit(repo_id, ops, commit_message=commit_message, token=token, revision=revision,
                                     create_pr=create_pr)
        return str(getattr(info, "commit_url", info))

    def train(self, mode: bool = True) -> "SlotVLM":
        """Only the connector changes mode; the frozen base models stay in eval mode."""
        super().train(mode)
        self.vision.eval()
        self.llm.eval()
        return self

    def trainable_parameters(self):
        return self.connector.parameters()

    @property
    def device(self) -> torch.device:
        return next(self.connector.parameters()).device

    # ------------------------------------------------------------------ video → embeddings
    @torch.no_grad()
    def vision_features(self, pixel_values: torch.Tensor, chunk_size: int = 64) -> torch.Tensor:
        """CLIP features: ``pixel_values [T, 3, S, S]`` → ``[T, G, G, Dv]`` (the ``vision_layer``
        hidden state, CLS dropped), in the vision tower's dtype, no grad."""
        s = self.config.image_size
        check_tensor("pixel_values", pixel_values, shape=(None, 3, s, s), floating=True)
        g = self.config.grid_size
        vdev = next(self.vision.parameters()).device
        vdtype = next(self.vision.parameters()).dtype
        out = []
        for chunk in pixel_values.split(chunk_size):
            hs = self.vision(pixel_values=chunk.to(vdev, vdtype), output_hidden_states=True).hidden_states
            x = hs[self.config.vision_layer][:, 1:]
            out.append(x.reshape(x.shape[0], g, g, x.shape[-1]))
        return torch.cat(out, 0)

    def encode_video(self, pixel_values) -> torch.Tensor:
        """``pixel_values [B, T, 3, S, S]`` or a list of ``[T_i, 3, S, S]`` → ``[B, L, H_llm]``."""
        if isinstance(pixel_values, torch.Tensor):
            check_tensor("pixel_values", pixel_values, ndim=5, floating=True)
            videos = list(pixel_values.unbind(0))
        else:
            videos = list(pixel_values)
        if not videos:
            raise ValueError("pixel_values is empty: need at least one video")
        for i, v in enumerate(videos):
            check_tensor(f"pixel_values[{i}]", v, ndim=4, floating=True)
            if v.shape[0] < 1:
                raise ValueError(f"pixel_values[{i}] has no frames: {describe(v)}")
        # all frames of all videos through CLIP together (full chunks), then split per video
        feats = self.vision_features(torch.cat(videos, 0))
        return self.encode_features(list(feats.split([v.shape[0] for v in videos])))

    def encode_features(self, features=None, *, slow=None, fast=None, return_attn: bool = False):
        """Connector on CLIP features → ``[B, L, H_llm]`` in the LLM's dtype.

        Either ``features``: a list of ``[T_i, G, G, Dv]`` (or ``[B, T, G, G, Dv]``), or the cached
        form ``slow=[B, t_d, G, G, Dv]``, ``fast=`` list of ``[T_i, G/s, G/s, Dv]``.
        With ``return_attn=True`` also the connector's attention maps (see :class:`SlowFastSlots`).
        """
        dev = self.device

        def move(x):
            if x is None:
                return None
            if isinstance(x, torch.Tensor):
                return x.to(dev)
            return [t.to(dev) for t in x]

        out = self.connector(move(features), slow=move(slow), fast=move(fast), return_attn=return_attn)
        llm_dtype = self.llm.get_input_embeddings().weight.dtype
        if return_attn:
            return out[0].to(llm_dtype), out[1]
        return out.to(llm_dtype)

    # ------------------------------------------------------------------ prompts
    def _token_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _answer_ids(self, after: str, answer: str) -> tuple[list[int], list[int]]:
        """Ids of the prompt text after the video and of ``answer``, split as in the whole turn
        (:func:`slotvlm.conversation.reply_token_ids`)."""
        return reply_token_ids(self.tokenizer, after, answer, getattr(self.conversation, "answer_prefix", ""))

    def build_inputs(self, video_embeds: torch.Tensor, questions: Sequence[str],
                     answers: Sequence[str] | None = None, *, history=None, system=None) -> dict:
        """Embed the prompts with the video embeddings in place of ``<video>``.

        Args:
            video_embeds: ``[B, L, H]`` from :meth:`encode_video` / :meth:`encode_features`.
            questions: B user questions (``<video>`` is put before each unless it already has one).
            answers: B answers for training (each followed by EOS), or None for generation.
            history: None, or per video a list of earlier ``(question, answer)`` turns (multi-turn
                chat); the video goes into the first turn.
            system: None (the template's default system prompt), one string for every row, or a
                list of B strings / Nones: the system prompt of each conversation.

        Returns:
            dict with ``inputs_embeds [B, S, H]``, ``attention_mask [B, S]`` and, with answers,
            ``labels [B, S]`` (-100 everywhere except the answer tokens and their EOS). Training
            batches are right-padded, generation batches left-padded.
        """
        check_tensor("video_embeds", video_embeds, ndim=3, floating=True)
        b = video_embeds.shape[0]
        if isinstance(questions, str) or len(questions) != b:
            raise ValueError(f"questions must be a list of {b} strings (one per video), got {questions!r}")
        if answers is not None and (isinstance(answers, str) or len(answers) != b):
            raise ValueError(f"answers must be None or a list of {b} strings, got {answers!r}")
        if history is not None and len(history) != b:
            raise ValueError(f"history must be None or a list of {b} turn lists, got {history!r}")
        if system is None or isinstance(system, str):
            system = [system] * b
        elif len(system) != b or not all(s is None or isinstance(s, str) for s in system):
            raise ValueError(f"system must be None, a string or a list of {b} strings/Nones, got {system!r}")
        tok = self.tokenizer
        embed = self.llm.get_input_embeddings()
        dev, dtype = embed.weight.device, embed.weight.dtype
        video_embeds = video_embeds.to(dev, dtype)
        bos = [tok.bos_token_id] if tok.bos_token_id is not None and not self.conversation.includes_bos else []
        seqs, labels = [], []
        for i, q in enumerate(questions):
            prompt = self.conversation.prompt(q, history[i] if history is not None else None, system=system[i])
            if prompt.count(VIDEO_TOKEN) != 1:
                raise ValueError(f"questions[{i}] must contain {VIDEO_TOKEN!r} at most once, got {q!r}")
            before, after = prompt.split(VIDEO_TOKEN)
            ids_before = torch.tensor(bos + self._token_ids(before), dtype=torch.long, device=dev)
            if answers is not None:
                ids_after, ids_ans = self._answer_ids(after, str(answers[i]).strip())
                ids_ans = ids_ans + [tok.eos_token_id]
            else:
                ids_after, ids_ans = self._token_ids(after), []
            lab = [IGNORE_INDEX] * (len(ids_before) + video_embeds.shape[1] + len(ids_after)) + ids_ans
            ids_after = ids_after + ids_ans
            ids_after = torch.tensor(ids_after, dtype=torch.long, device=dev)
            seqs.append(torch.cat([embed(ids_before), video_embeds[i], embed(ids_after)], 0))
            labels.append(lab)
        length = max(s.shape[0] for s in seqs)
        h = video_embeds.shape[-1]
        inputs = torch.zeros(b, length, h, dtype=dtype, device=dev)
        mask = torch.zeros(b, length, dtype=torch.long, device=dev)
        lab_t = torch.full((b, length), IGNORE_INDEX, dtype=torch.long, device=dev)
        left = answers is None
        for i, s in enumerate(seqs):
            n = s.shape[0]
            sl = slice(length - n, length) if left else slice(0, n)
            inputs[i, sl] = s
            mask[i, sl] = 1
            lab_t[i, sl] = torch.tensor(labels[i], dtype=torch.long, device=dev)
        out = {"inputs_embeds": inputs, "attention_mask": mask}
        if answers is not None:
            out["labels"] = lab_t
        return out

    # ------------------------------------------------------------------ LLM
    def forward(self, video_embeds: torch.Tensor | None = None, questions: Sequence[str] | None = None,
                answers: Sequence[str] | None = None, *, pixel_values=None, features=None, slow=None,
                fast=None, **llm_kwargs):
        """Teacher-forced pass through the LLM; ``.loss`` is the answer-token cross-entropy.

        Give ``video_embeds [B, L, H]`` or one of ``pixel_values`` / ``features`` / ``slow``+``fast``.
        """
        if video_embeds is None:
            if pixel_values is not None:
                video_embeds = self.encode_video(pixel_values)
            elif features is not None or slow is not None or fast is not None:
                video_embeds = self.encode_features(features, slow=slow, fast=fast)
            else:
                raise ValueError("forward needs video_embeds, pixel_values, features or slow/fast")
        if questions is None:
            raise ValueError("forward needs questions (a list of strings)")
        inputs = self.build_inputs(video_embeds, questions, answers)
        return self.llm(**inputs, **llm_kwargs)

    @torch.no_grad()
    def generate(self, video_embeds: torch.Tensor, questions: Sequence[str], max_new_tokens: int = 64,
                 do_sample: bool = False, *, history=None, system=None, **gen_kwargs) -> list[str]:
        """Answers for a batch: ``video_embeds [B, L, H]`` + B questions → B strings (greedy by
        default). ``history``, ``system``: as in :meth:`build_inputs`; other keywords go to the LLM's
        generate."""
        inputs = self.build_inputs(video_embeds, questions, history=history, system=system)
        tok = self.tokenizer
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id)
        if not do_sample:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        kwargs.update(gen_kwargs)
        out = self.llm.generate(**inputs, **kwargs)
        return [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]

    def stream(self, video_embeds: torch.Tensor, question: str, max_new_tokens: int = 64, do_sample: bool = False,
               *, history=None, system: str | None = None, **gen_kwargs):
        """Like :meth:`generate` for one video and one question, but yields the answer's text in pieces
        as the LLM produces them (``transformers.TextIteratorStreamer``; generation runs in a thread).
        ``video_embeds [1, L, H]``; ``history``: earlier ``(question, answer)`` turns of this video;
        ``system``: the system prompt (None: the template's default).
        The pieces joined and stripped equal ``generate(...)[0]``; each piece but the last holds
        non-blank text."""
        import threading  # noqa: PLC0415

        from transformers import TextIteratorStreamer  # noqa: PLC0415

        check_tensor("video_embeds", video_embeds, shape=(1, None, None), floating=True)
        inputs = self.build_inputs(video_embeds, [question], history=[list(history or [])], system=system)
        tok = self.tokenizer
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, streamer=streamer)
        if not do_sample:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        kwargs.update(gen_kwargs)
        from transformers import StoppingCriteria, StoppingCriteriaList  # noqa: PLC0415

        stop = threading.Event()  # set when the reader stops early (break, closed generator)

        class _ReaderGone(StoppingCriteria):
            def __call__(self, input_ids, scores, **_):
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        kwargs["stopping_criteria"] = StoppingCriteriaList([*(kwargs.get("stopping_criteria") or []), _ReaderGone()])
        errors: list[BaseException] = []

        def work():
            try:
                with torch.no_grad():
                    self.llm.generate(**inputs, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            # whitespace-only pieces (some tokenizer versions stream a lone " " before a word) are
            # carried into the next piece, so every piece a client shows has text in it
            # the reply's first piece is left-stripped: the template's space before the reply
            # (``ASSISTANT: green``) is the first token's, not the answer's
            pending, first = "", True
            for piece in streamer:
                pending += piece
                if pending.strip():
                    yield pending.lstrip() if first else pending
                    pending, first = "", False
            if pending:
                yield pending
        finally:
            stop.set()
            thread.join()
        if errors:
            raise errors[0]

    def load_video(self, path: str, max_frames: int | None = None) -> torch.Tensor:
        """Decode ``path`` at ``config.fps`` → CLIP-ready ``[T, 3, S, S]``."""
        from ..video import load_video, preprocess  # noqa: PLC0415

        frames, _ = load_video(path, fps=self.config.fps, max_frames=max_frames or self.config.max_frames)
        return preprocess(frames, size=self.config.image_size)

    def answer(self, video, question: str, **gen) -> str:
        """One answer: ``video`` is a file path or ``pixel_values [T, 3, S, S]``."""
        if isinstance(video, (str, os.PathLike)):
            video = self.load_video(str(video))
        elif not isinstance(video, torch.Tensor):
            raise ValueError(f"video must be a path or a [T, 3, S, S] tensor, got {type(video).__name__}")
        elif video.dim() != 4:
            raise ValueError(f"video must have shape [T, 3, S, S], got {describe(video)}")
        embeds = self.encode_video([video])
        return self.generate(embeds, [question], **gen)[0]


def _training_record(directory: str) -> dict | None:
    """What ``slotvlm train`` left in ``directory/train_args.json``, reduced to the card's fields."""
    path = os.path.join(directory, "train_args.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            args = json.load(f)
    except (OSError, ValueError):
        return None
    keep = ("stage", "branch", "data", "features", "epochs", "max_steps", "lr", "batch_size", "seed", "world_size")
    rec = {k: args.get(k) for k in keep if args.get(k) is not None}
    stats = args.get("data_stats")
    if isinstance(stats, dict):
        rec["data_stats"] = {k: v for k, v in stats.items() if isinstance(v, (int, float, str))}
    return rec


AutoConfig.register("slotvlm", SlotVLMConfig, exist_ok=True)
AutoModel.register(SlotVLMConfig, SlotVLM, exist_ok=True)
