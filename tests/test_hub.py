"""Slot-VLM on the hub's terms (tiny random models, CPU, no network):

save → move/copy the folder → load gives identical outputs; ``AutoConfig``/``AutoModel`` return the
Slot-VLM classes; a path that looks local and does not exist fails at once without a hub lookup;
``push_to_hub`` against a loopback stand-in of the hub API (tests/hub_server.py) uploads the config,
the connector, the model card and the bundled tiny base models; the pushed files laid out as a
huggingface_hub cache load by hub id with ``HF_HUB_OFFLINE=1`` (in a fresh process), also when the
config names its base models by hub id. Plus chat templates, streaming, the CLI flags.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from slotvlm.cli import main
from slotvlm.model import SlotVLM, SlotVLMConfig

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from hub_server import FakeHub  # noqa: E402

QUESTION = "What is happening in the video?"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("hub")


@pytest.fixture(scope="module")
def tiny(root):
    """`slotvlm init --tiny`: one self-contained folder (clip/, llm/ inside)."""
    out = root / "tiny"
    assert main(["init", "--tiny", str(out)]) == 0
    return str(out)


def outputs(model) -> dict:
    """Everything a user sees, deterministic: video tokens of fixed pixels (through CLIP and the
    connector), the LLM's logits on the prompt, and a greedy answer."""
    g = torch.Generator().manual_seed(0)
    s = model.config.image_size
    pixels = torch.randn(3, 3, s, s, generator=g)
    emb = model.encode_video([pixels])
    logits = model.llm(**model.build_inputs(emb, [QUESTION])).logits
    answer = model.generate(emb, [QUESTION], max_new_tokens=6)[0]
    return {"emb": emb.detach(), "logits": logits.detach(), "answer": answer}


def assert_same(a: dict, b: dict) -> None:
    assert torch.equal(a["emb"], b["emb"])
    assert torch.equal(a["logits"], b["logits"])
    assert a["answer"] == b["answer"]


@pytest.fixture(scope="module")
def reference(tiny):
    return outputs(SlotVLM.from_pretrained(tiny, device="cpu").eval())


# ------------------------------------------------------------------------------------ save / move
def test_saved_folder_is_relative_and_moves(tiny, reference, root):
    text = open(os.path.join(tiny, "config.json"), encoding="utf-8").read()
    cfg = json.loads(text)
    assert cfg["model_type"] == "slotvlm" and cfg["vision_model"] == "./clip" and cfg["llm_model"] == "./llm"
    assert str(root) not in text  # no absolute path anywhere
    assert sorted(os.listdir(tiny)) == ["README.md", "clip", "config.json", "connector.safetensors", "llm"]

    copied = root / "a" / "b" / "copied"
    shutil.copytree(tiny, copied)
    assert_same(outputs(SlotVLM.from_pretrained(str(copied), device="cpu").eval()), reference)
    moved = root / "moved_elsewhere"
    shutil.move(str(copied), moved)
    assert not copied.exists()
    assert_same(outputs(SlotVLM.from_pretrained(str(moved), device="cpu").eval()), reference)


def test_model_beside_its_base_models_moves_with_them(root):
    """make_tiny_slotvlm's layout: DIR/clip, DIR/llm, DIR/model → the config says ../clip."""
    from slotvlm.testing import make_tiny_slotvlm

    d = root / "side"
    model_dir = make_tiny_slotvlm(d)
    assert json.load(open(os.path.join(model_dir, "config.json")))["vision_model"] == "../clip"
    ref = outputs(SlotVLM.from_pretrained(model_dir, device="cpu").eval())
    shutil.move(str(d), root / "side_moved")
    assert_same(outputs(SlotVLM.from_pretrained(str(root / "side_moved" / "model"), device="cpu").eval()), ref)
    # the model folder alone, without its base models: a clear error naming the reference
    shutil.move(str(root / "side_moved" / "model"), root / "lonely")
    with pytest.raises(ValueError, match=r"vision_model='\.\./clip'.*does not exist"):
        SlotVLM.from_pretrained(str(root / "lonely"), device="cpu")


def test_legacy_folder_with_absolute_paths_loads(tiny, reference, root):
    legacy = root / "legacy"
    shutil.copytree(tiny, legacy)
    cfg = json.load(open(legacy / "config.json"))
    os.remove(legacy / "config.json")
    cfg.update(vision_model=str(legacy / "clip"), llm_model=str(legacy / "llm"))
    for k in ("architectures", "transformers_version", "training"):
        cfg.pop(k)
    (legacy / "slotvlm_config.json").write_text(json.dumps(cfg))
    assert_same(outputs(SlotVLM.from_pretrained(str(legacy), device="cpu").eval()), reference)


def test_auto_classes(tiny, reference):
    from transformers import AutoConfig, AutoModel, PreTrainedModel

    cfg = AutoConfig.from_pretrained(tiny)
    assert type(cfg) is SlotVLMConfig and cfg.model_type == "slotvlm" and cfg.num_tokens == 192
    model = AutoModel.from_pretrained(tiny, device_map="cpu", dtype="auto")
    assert type(model) is SlotVLM and isinstance(model, PreTrainedModel) and model.device.type == "cpu"
    assert_same(outputs(model.eval()), reference)


# ------------------------------------------------------------------------------ local-looking paths
@pytest.mark.parametrize("name", ["./tiny/clipp", "tiny/clipp", "nowhere/x/y", "~/no_such_slotvlm_dir"])
def test_local_looking_missing_path_fails_at_once(tiny, root, monkeypatch, name):
    import huggingface_hub

    def no_hub(*a, **k):
        raise AssertionError("a hub lookup was attempted")

    for fn in ("hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, fn, no_hub)
    monkeypatch.chdir(root)  # so that `tiny/` is an existing parent folder
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="looks like a local path"):
        SlotVLM.from_pretrained(name, device="cpu")
    with pytest.raises(ValueError, match=r"vision_model=.*looks like a local path"):
        SlotVLM.from_config(SlotVLMConfig(vision_model=name, llm_model="tiny/llm"), device="cpu")
    assert time.perf_counter() - t0 < 5


def test_cli_mistyped_local_path(root, tiny, monkeypatch, capsys):
    monkeypatch.chdir(root)
    t0 = time.perf_counter()
    assert main(["init", "--vision", "tiny/clipp", "--llm", "tiny/llm", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert "vision_model='tiny/clipp' looks like a local path but does not exist" in err
    assert time.perf_counter() - t0 < 5 and not (root / "x").exists()


def test_looks_local():
    from slotvlm.model.config import looks_local

    assert not looks_local("openai/clip-vit-large-patch14") and not looks_local("gpt2")
    assert looks_local("/abs/path") and looks_local("./x") and looks_local("../x") and looks_local("a/b/c")


# ------------------------------------------------------------------------- push_to_hub + hub cache
def _cache_repo(hf_home, repo_id: str, files: dict[str, bytes], rev: str) -> None:
    """Lay ``files`` out the way huggingface_hub caches a repo: hub/models--org--name/snapshots/<rev>/,
    refs/main = <rev>."""
    base = os.path.join(hf_home, "hub", "models--" + repo_id.replace("/", "--"))
    for path, data in files.items():
        dest = os.path.join(base, "snapshots", rev, path)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as f:
            f.write(data)
    os.makedirs(os.path.join(base, "refs"), exist_ok=True)
    with open(os.path.join(base, "refs", "main"), "w") as f:
        f.write(rev)


def _folder_files(folder: str) -> dict[str, bytes]:
    out = {}
    for r, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(r, n)
            out[os.path.relpath(p, folder).replace(os.sep, "/")] = open(p, "rb").read()
    return out


def _run_offline(hf_home, script: str, out_prefix: str) -> dict:
    """Run ``script`` (argv[1] = ``out_prefix``) in a fresh interpreter that sees only the hub cache
    under ``hf_home`` (``HF_HUB_OFFLINE=1``); its last stdout line is JSON, returned."""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": REPO}
    env.pop("HF_HUB_CACHE", None)
    env.pop("HF_ENDPOINT", None)
    proc = subprocess.run([sys.executable, "-c", script, out_prefix], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_push_to_hub_then_load_offline_from_the_cache(tiny, reference, root):
    from huggingface_hub import HfApi, ModelCard
    from safetensors.torch import load

    model = SlotVLM.from_pretrained(tiny, device="cpu").eval()
    with FakeHub() as hub:
        api = HfApi(endpoint=hub.url, token=hub.token)
        url = model.push_to_hub("me/tiny-slotvlm", api=api, commit_message="tiny model")
    assert url.startswith(f"{hub.url}/me/tiny-slotvlm/commit/")
    assert ("POST", "/api/repos/create") in hub.requests and ("POST", "/api/validate-yaml") in hub.requests
    assert [c["summary"] for c in hub.commits] == ["tiny model"]  # one commit
    pushed = hub.repos["me/tiny-slotvlm"]
    local = _folder_files(tiny)
    assert set(pushed) == {"config.json", "connector.safetensors", "README.md"} | {
        p.replace("clip/", "vision/", 1) for p in local if p.startswith(("clip/", "llm/"))}
    for p, data in local.items():  # base models uploaded byte for byte
        if p.startswith(("clip/", "llm/")):
            assert pushed[p.replace("clip/", "vision/", 1)] == data, p
    a, b = load(pushed["connector.safetensors"]), load(local["connector.safetensors"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cfg = json.loads(pushed["config.json"])
    assert (cfg["vision_model"], cfg["llm_model"], cfg["model_type"]) == ("./vision", "./llm", "slotvlm")
    card = ModelCard(pushed["README.md"].decode())
    assert card.data.license == "apache-2.0" and "slotvlm" in card.data.tags
    assert card.data.library_name == "slotvlm" and card.data.pipeline_tag == "video-text-to-text"
    assert "| **total** | handed to the LLM per video | **192** |" in card.text
    assert 'SlotVLM.from_pretrained("me/tiny-slotvlm")' in card.text and "Untrained connector" in card.text
    assert model.config.vision_model == os.path.join(tiny, "clip")  # the model itself is unchanged

    # the pushed repo in a hub-cache layout + a second repo that names its base models by hub id
    hf_home = root / "hf_home"
    _cache_repo(hf_home, "me/tiny-slotvlm", pushed, "a" * 40)
    _cache_repo(hf_home, "tiny-org/clip", {k[len("vision/"):]: v for k, v in pushed.items() if k.startswith("vision/")},
                "b" * 40)
    _cache_repo(hf_home, "tiny-org/llama", {k[len("llm/"):]: v for k, v in pushed.items() if k.startswith("llm/")},
                "c" * 40)
    hubrefs = {k: v for k, v in pushed.items() if "/" not in k}
    hubrefs["config.json"] = json.dumps({**cfg, "vision_model": "tiny-org/clip", "llm_model": "tiny-org/llama"}).encode()
    _cache_repo(hf_home, "me/tiny-hubrefs", hubrefs, "d" * 40)

    script = textwrap.dedent(f"""
        import json, sys, time, torch
        sys.path.insert(0, {HERE!r})
        from safetensors.torch import save_file
        from test_hub import outputs
        from slotvlm import SlotVLM
        res = {{}}
        for repo in ("me/tiny-slotvlm", "me/tiny-hubrefs"):
            m = SlotVLM.from_pretrained(repo, device="cpu").eval()
            o = outputs(m)
            save_file({{"emb": o["emb"].contiguous(), "logits": o["logits"].contiguous()}}, sys.argv[1] + repo.replace("/", "_"))
            res[repo] = {{"answer": o["answer"], "vision": m.config.vision_model}}
        t0 = time.perf_counter()
        try:
            SlotVLM.from_pretrained("me/not-in-cache", device="cpu")
        except ValueError as e:
            res["missing"] = [str(e), time.perf_counter() - t0]
        print(json.dumps(res))
    """)
    res = _run_offline(hf_home, script, str(root / "out_"))
    from safetensors.torch import load_file

    for repo in ("me/tiny-slotvlm", "me/tiny-hubrefs"):
        t = load_file(str(root / ("out_" + repo.replace("/", "_"))))
        assert_same({**t, "answer": res[repo]["answer"]}, reference)
    assert "/snapshots/" + "a" * 40 + "/vision" in res["me/tiny-slotvlm"]["vision"]
    assert res["me/tiny-hubrefs"]["vision"] == "tiny-org/clip"  # a hub id stays a hub id
    msg, seconds = res["missing"]
    assert "me/not-in-cache" in msg and seconds < 10



def test_auto_model_hub_id_and_subfolder(tiny, reference, root):
    """transformers' ``AutoModel.from_pretrained`` forwards ``force_download``, ``proxies``,
    ``subfolder``... (5.25): a folder, a folder's sub-folder, a hub id and a hub id's sub-folder (offline
    cache layout) all give the same SlotVLM as ``SlotVLM.from_pretrained(folder)``; an unknown keyword
    is a ValueError that names it."""
    from transformers import AutoModel

    outer = root / "outer"
    shutil.copytree(tiny, outer / "m")
    model = AutoModel.from_pretrained(str(outer), subfolder="m", force_download=False, proxies=None)
    assert type(model) is SlotVLM
    assert_same(outputs(model.eval()), reference)
    with pytest.raises(ValueError, match="subfolder='nope'"):
        SlotVLM.from_pretrained(str(outer), subfolder="nope")
    with pytest.raises(ValueError, match="no_such_option"):
        SlotVLM.from_pretrained(tiny, no_such_option=1)

    hf_home = root / "hf_home_sub"
    files = _folder_files(tiny)
    _cache_repo(hf_home, "me/flat", files, "e" * 40)
    _cache_repo(hf_home, "me/nested", {"m/" + k: v for k, v in files.items()}, "f" * 40)
    script = textwrap.dedent(f"""
        import json, sys, torch
        sys.path.insert(0, {HERE!r})
        from safetensors.torch import save_file
        import slotvlm  # registers the Auto classes (tests/test_autoreg.py covers the import orders)
        from transformers import AutoModel
        from test_hub import outputs
        res = {{}}
        for repo, kw in (("me/flat", {{}}), ("me/nested", {{"subfolder": "m"}})):
            m = AutoModel.from_pretrained(repo, **kw).eval()
            o = outputs(m)
            save_file({{"emb": o["emb"].contiguous(), "logits": o["logits"].contiguous()}}, sys.argv[1] + repo[3:])
            res[repo] = {{"answer": o["answer"], "type": type(m).__name__}}
        print(json.dumps(res))
    """)
    res = _run_offline(hf_home, script, str(root / "auto_"))
    from safetensors.torch import load_file

    for repo in ("me/flat", "me/nested"):
        assert res[repo]["type"] == "SlotVLM"
        t = load_file(str(root / ("auto_" + repo[3:])))
        assert_same({**t, "answer": res[repo]["answer"]}, reference)

def test_card_lists_hub_base_models():
    from huggingface_hub import ModelCard

    from slotvlm.model.card import render_model_card

    cfg = SlotVLMConfig(use_fast=False, training=[{"stage": 2, "branch": "slow", "data": "/d/instructions.json",
                                                   "max_steps": 100, "lr": 2e-5, "batch_size": 40}])
    card = ModelCard(render_model_card(cfg, trainable_params=1234, license="llama2", repo_id="org/m"))
    assert card.data.base_model == ["openai/clip-vit-large-patch14", "lmsys/vicuna-7b-v1.5"]
    assert card.data.license == "llama2"
    assert "| object (slow) branch | 8 frames × 8 slots | 64 |" in card.text and "event (fast)" not in card.text
    assert "| 1 | 2 | slow | `instructions.json` | 100 | 2e-05 | 40 |" in card.text
    assert "Untrained" not in card.text


def test_training_stage_recorded_in_card(tiny, root):
    out = root / "trained"
    out.mkdir()
    (out / "train_args.json").write_text(json.dumps({"stage": 1, "features": "/x/cache", "max_steps": 3, "lr": 1e-4,
                                                     "batch_size": 4, "seed": 0}))
    m = SlotVLM.from_pretrained(tiny, device="cpu")
    m.save_pretrained(out)
    m.save_pretrained(out)  # saving again does not repeat the record
    again = SlotVLMConfig.load(str(out))
    assert again.training == [{"stage": 1, "features": "/x/cache", "max_steps": 3, "lr": 1e-4, "batch_size": 4,
                               "seed": 0}]
    assert "| 1 | 1 | both | `cache` | 3 | 0.0001 | 4 |" in (out / "README.md").read_text()


# ------------------------------------------------------------------------- chat template, stream
def test_chat_template_from_the_tokenizer(tiny):
    m = SlotVLM.from_pretrained(tiny, device="cpu").eval()
    tok = m.tokenizer
    assert tok.chat_template and m.conversation.name == "tokenizer" and m.conversation.includes_bos
    msgs = [{"role": "user", "content": "<video>\nWhy?"}, {"role": "assistant", "content": "Because."},
            {"role": "user", "content": "Then?"}]
    assert m.conversation.prompt("Then?", [("Why?", "Because.")]) == tok.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=True)
    emb = torch.zeros(1, m.config.num_tokens, m.config.llm_hidden)
    inp = m.build_inputs(emb, ["Why?"])
    before = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True).split("<video>")[0]
    ids = tok(before, add_special_tokens=False).input_ids
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1  # exactly one BOS
    e = m.llm.get_input_embeddings().weight
    assert torch.equal(inp["inputs_embeds"][0, : len(ids)], e[ids])


def test_stream_yields_while_generating(tiny):
    from transformers import LogitsProcessor, LogitsProcessorList
    import threading

    m = SlotVLM.from_pretrained(tiny, device="cpu").eval()
    tok = m.tokenizer
    forced = tok("a red ball moves across a blue field", add_special_tokens=False).input_ids + [tok.eos_token_id]
    gate = threading.Event()

    class Force(LogitsProcessor):
        """Emit ``forced`` token by token; before the last words, wait until the reader has text."""

        def __init__(self):
            self.step, self.waited = 0, None

        def __call__(self, input_ids, scores):
            if self.step == len(forced) - 3:
                self.waited = gate.wait(timeout=30)
            out = torch.full_like(scores, float("-inf"))
            out[:, forced[min(self.step, len(forced) - 1)]] = 0
            self.step += 1
            return out

    emb = m.encode_features([torch.randn(4, 16, 16, m.config.vision_hidden)])
    proc = Force()
    pieces = []
    for piece in m.stream(emb, QUESTION, max_new_tokens=20, logits_processor=LogitsProcessorList([proc])):
        pieces.append(piece)
        gate.set()
    assert proc.waited is True  # text reached the reader while generation was still going
    assert len(pieces) >= 3
    assert "".join(pieces).strip() == "a red ball moves across a blue field"
    plain = m.generate(emb, [QUESTION], max_new_tokens=20, logits_processor=LogitsProcessorList([Force()]))[0]
    assert plain == "".join(pieces).strip()

    # a reader that leaves early stops the generation (no thread left running, no 500 tokens made)
    word = tok(" red", add_special_tokens=False).input_ids

    class Endless(LogitsProcessor):
        steps = 0

        def __call__(self, input_ids, scores):
            out = torch.full_like(scores, float("-inf"))
            out[:, word[Endless.steps % len(word)]] = 0
            Endless.steps += 1
            return out

    gen = m.stream(emb, QUESTION, max_new_tokens=500, logits_processor=LogitsProcessorList([Endless()]))
    try:
        first = next(gen)
    finally:
        gen.close()
    assert first.strip() and "red red red".startswith(first.strip()) and Endless.steps < 250


def test_chat_cli_streams_multi_turn(tiny, root, monkeypatch, capsys):
    import io

    from slotvlm.testing import make_clip

    clip = make_clip(root / "c.mp4", seconds=3, fps=2, size=48)
    monkeypatch.setattr(sys, "stdin", io.StringIO("Why?\nThen?\n"))
    assert main(["chat", "--model", tiny, "--video", clip, "--max-new-tokens", "5"]) == 0
    lines = capsys.readouterr().out.rstrip("\n").split("\n")  # random bytes may hold other line breaks
    m = SlotVLM.from_pretrained(tiny, device="cpu").eval()
    emb = m.encode_video([m.load_video(clip)])
    a1 = m.generate(emb, ["Why?"], max_new_tokens=5)[0]
    a2 = m.generate(emb, ["Then?"], max_new_tokens=5, history=[[("Why?", a1)]])[0]
    assert [line.rstrip() for line in lines] == [f"ASSISTANT: {a1}".rstrip(), f"ASSISTANT: {a2}".rstrip()]


# ------------------------------------------------------------------------------------ CLI flags
@pytest.mark.parametrize("alias,name", [("bf16", "bfloat16"), ("fp32", "float32"), ("FP16", "float16"),
                                        ("bfloat16", "bfloat16"), ("half", "float16")])
def test_dtype_aliases_everywhere(alias, name):
    from slotvlm.cli import build_parser

    for cmd in (["chat", "--model", "m", "--video", "v"], ["judge", "--preds", "p", "--out", "o"],
                ["visualize", "--model", "m", "--video", "v", "--out", "o"], ["predict", "--model", "m",
                                                                             "--qa", "q", "--out", "o"]):
        args = build_parser(cmd[0]).parse_args([*cmd, "--dtype", alias])
        assert args.dtype == name and getattr(torch, args.dtype) is not None


def test_bad_dtype_is_named(capsys):
    assert main(["judge", "--preds", "p", "--out", "o", "--dtype", "fp8"]) == 2  # usage error: one line, exit 2
    assert "invalid dtype 'fp8'" in capsys.readouterr().err


def test_synth_num_videos_and_deprecated_alias(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "a"), "--num-videos", "2", "--seconds", "2", "--size", "32"]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "b"), "--videos", "2", "--seconds", "2", "--size", "32"]) == 0
    assert "--videos N is deprecated, use --num-videos N" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "a" / "videos")) == sorted(os.listdir(tmp_path / "b" / "videos"))
    assert main(["synth", str(tmp_path / "c")]) == 2
    assert "--num-videos" in capsys.readouterr().err
