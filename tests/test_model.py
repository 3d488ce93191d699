"""Slot-VLM model tests on tiny random checkpoints (tiny CLIP + tiny LLaMA saved to a temp folder and
loaded through the same from_pretrained path as real hub ids)."""
import io
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slotvlm.cli import main
from slotvlm.model import PoolingConnector, SlotVLM, SlotVLMConfig, SlowFastSlots, slowfast_pool_features
from slotvlm.testing import make_clip, make_tiny_clip, make_tiny_llm

DV, H_LLM, G = 32, 64, 16  # tiny CLIP width, tiny LLaMA width, patch grid


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    return make_tiny_clip(root / "clip"), make_tiny_llm(root / "llm")


@pytest.fixture(scope="module")
def model_dir(bases, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "slotvlm"
    clip, llm = bases
    rc = main(["init", "--vision", clip, "--llm", llm, "--out", str(out), "--slot-dim", "24", "--proj-dim", "40",
               "--max-frames", "64", "--device", "cpu", "--dtype", "float32"])
    assert rc == 0
    return str(out)


@pytest.fixture(scope="module")
def model(model_dir):
    return SlotVLM.from_pretrained(model_dir, device="cpu").eval()


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", seconds=7, fps=2, size=64)


def feats(*lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(t, G, G, DV, generator=g) for t in lengths]


def connector(**kw):
    args = dict(grid_size=G, slot_dim=24, slot_hidden_dim=24, proj_dim=40, max_frames=64, qformer_heads=4)
    args.update(kw)
    return SlowFastSlots(DV, H_LLM, **args).eval()


# ---------------------------------------------------------------------- init / load / save
def test_init_then_from_pretrained(model_dir, model, bases):
    cfg = SlotVLMConfig.load(model_dir)
    assert cfg.vision_model == os.path.abspath(bases[0]) and cfg.llm_model == os.path.abspath(bases[1])
    assert (cfg.vision_hidden, cfg.llm_hidden, cfg.grid_size, cfg.num_tokens) == (DV, H_LLM, G, 192)
    from safetensors.torch import load_file

    saved = load_file(os.path.join(model_dir, "connector.safetensors"))
    state = model.connector.state_dict()
    assert set(saved) == set(state)
    assert all(torch.equal(saved[k], state[k]) for k in saved)
    # only the connector is trainable
    assert not any(p.requires_grad for p in model.vision.parameters())
    assert not any(p.requires_grad for p in model.llm.parameters())
    assert all(p.requires_grad for p in model.connector.parameters())


@pytest.mark.parametrize("t", [7, 20, 45])
def test_encode_video_shape_and_determinism(model, t):
    pixels = torch.randn(1, t, 3, 224, 224, generator=torch.Generator().manual_seed(t))
    a = model.encode_video(pixels)
    b = model.encode_video(pixels)
    assert a.shape == (1, 192, H_LLM)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)


def test_vision_features_penultimate_layer(model):
    pixels = torch.randn(3, 3, 224, 224)
    out = model.vision_features(pixels)
    ref = model.vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    assert out.shape == (3, G, G, DV)
    torch.testing.assert_close(out.reshape(3, G * G, DV), ref, rtol=0, atol=0)


def test_full_clip_checkpoint_uses_its_vision_tower(bases, tmp_path):
    """openai/clip-* checkpoints are whole CLIPModels: the vision tower must be picked out of them."""
    from transformers import CLIPModel

    full = make_tiny_clip(tmp_path / "clip_full", seed=7, full=True)
    m = SlotVLM.from_config(SlotVLMConfig(vision_model=full, llm_model=bases[1], slot_dim=24, proj_dim=40),
                            device="cpu")
    ref_model = CLIPModel.from_pretrained(full)
    pixels = torch.randn(2, 3, 224, 224)
    ref = ref_model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    torch.testing.assert_close(m.vision_features(pixels).reshape(2, G * G, DV), ref, rtol=0, atol=0)


def test_train_mode_samples_eval_mode_fixed():
    c = connector()
    f = feats(9)
    c.train()
    assert not torch.equal(c(f), c(f))  # fresh Gaussian noise per call
    c.eval()
    assert torch.equal(c(f), c(f))


def test_save_load_roundtrip_keeps_outputs(model_dir, tmp_path):
    m = SlotVLM.from_pretrained(model_dir, device="cpu").eval()
    with torch.no_grad():
        for p in m.connector.parameters():  # make the weights differ from any fresh init
            p.add_(0.01 * torch.randn_like(p))
    f = feats(5, 12)
    before = m.encode_features(f)
    m.save_pretrained(tmp_path / "saved")
    back = SlotVLM.from_pretrained(str(tmp_path / "saved"), device="cpu").eval()
    assert torch.equal(back.encode_features(f), before)
    fresh = SlotVLM.from_config(m.config, device="cpu").eval()
    assert not torch.equal(fresh.encode_features(f), before)


# ---------------------------------------------------------------------- connector semantics
def test_batch_of_different_lengths_equals_each_alone(model):
    f = feats(3, 11, 20, seed=1)
    batch = model.encode_features(f)
    for i, fi in enumerate(f):
        torch.testing.assert_close(batch[i : i + 1], model.encode_features([fi]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_varlen_packing_equals_padding_and_mask(backend):
    if backend == "triton":
        pytest.importorskip("triton")
    torch.manual_seed(4)
    c = connector(use_slow=False, backend=backend, slot_dim=16, slot_hidden_dim=16, proj_dim=16)
    f = feats(3, 6)
    c.varlen = False
    ref, ref_info = c(f, return_attn=True)
    c.varlen = True
    out, info = c(f, return_attn=True)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(info["fast"], ref_info["fast"], rtol=1e-4, atol=1e-5)
    assert (info["fast"][0, :, :, 3:] == 0).all()  # no attention on the shorter video's padding


def test_cached_form_equals_full_features(model):
    f = feats(6, 13, seed=2)
    slow, fast = slowfast_pool_features(f, 8, 4)
    # independent reference of the pooling
    for fi, s, fa in zip(f, slow, fast):
        idx = np.floor(np.linspace(0, fi.shape[0] - 1, 8) + 0.5).astype(int)
        torch.testing.assert_close(s, fi[idx])
        ref = fi.reshape(fi.shape[0], 4, 4, 4, 4, DV).mean(dim=(2, 4))
        torch.testing.assert_close(fa, ref)
    torch.testing.assert_close(model.encode_features(slow=slow, fast=fast), model.encode_features(f))


def _start(grouper):
    a = grouper.attn
    return a.slots_mu[0] + a.slots_logsigma[0].exp() * grouper.eval_noise


def test_slowfast_matches_per_frame_and_per_position_reference():
    """Object branch = slot attention on each sampled frame alone; event branch = slot attention over
    time for each pooled position alone (with its position embeddings); both projected."""
    torch.manual_seed(3)
    c = connector()
    f = feats(11, seed=3)[0]
    out = c([f])
    idx = torch.tensor(np.floor(np.linspace(0, 10, 8) + 0.5).astype(int))
    with torch.no_grad():
        obj = []
        for j, t in enumerate(idx):
            x = c.slow_in(f[t].reshape(1, G * G, DV))
            s = c.slow_slots.attn(x, slots=_start(c.slow_slots)[None]) + c.slow_pos[j]
            obj.append(s[0])
        obj = c.proj(c.slow_proj(torch.cat(obj)))
        pooled = F.avg_pool2d(f.permute(0, 3, 1, 2), 4).permute(0, 2, 3, 1).reshape(11, 16, DV)
        ev = []
        for p in range(16):
            x = c.fast_in(pooled[:, p]) + c.fast_pos[:11]
            ev.append(c.fast_slots.attn(x[None], slots=_start(c.fast_slots)[None])[0])
        ev = c.proj(c.fast_proj(torch.cat(ev)))
    torch.testing.assert_close(out[0], torch.cat([obj, ev]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t", [1, 3])
def test_short_videos(t):
    c = connector()
    out = c(feats(t))
    assert out.shape == (1, 192, H_LLM) and torch.isfinite(out).all()


def test_longer_than_max_frames_interpolates_positions():
    c = connector(max_frames=8)
    f = feats(13)[0]
    out = c([f])
    assert out.shape == (1, 192, H_LLM) and torch.isfinite(out).all()
    pos = c._fast_positions(13)
    torch.testing.assert_close(pos[0], c.fast_pos[0])
    torch.testing.assert_close(pos[-1], c.fast_pos[-1])
    torch.testing.assert_close(pos[6], (c.fast_pos[3] + c.fast_pos[4]) / 2)  # 6 · 7/12 = 3.5


@pytest.mark.parametrize(
    "kw,tokens",
    [
        pytest.param(dict(), 192, id="slowfast"),
        pytest.param(dict(use_fast=False), 64, id="object-only"),
        pytest.param(dict(use_slow=False), 128, id="event-only"),
        pytest.param(dict(grouper="qformer"), 192, id="qformer-two-branch"),
        pytest.param(dict(grouper="qformer", use_fast=False), 64, id="qformer-object"),
        pytest.param(dict(grouper="qformer", use_slow=False), 128, id="qformer-event"),
    ],
)
def test_token_counts(kw, tokens):
    c = connector(**kw)
    f = feats(5, 9)
    out = c(f)
    assert out.shape == (2, tokens, H_LLM) and c.num_tokens == tokens
    torch.testing.assert_close(out[1:], c(f[1:]), rtol=1e-5, atol=1e-5)  # masking: batch == alone
    _, info = c(f, return_attn=True)  # the maps `visualize` draws
    if c.use_slow:
        assert info["slow"].shape == (2, 8, 8, G * G)
        if c.grouper == "qformer":  # cross-attention: each query's softmax over the frame's tokens
            torch.testing.assert_close(info["slow"].sum(3), torch.ones(2, 8, 8))
        else:  # slot attention: each token's softmax over the slots
            torch.testing.assert_close(info["slow"].sum(2), torch.ones(2, 8, G * G))
    if c.use_fast:
        assert info["fast"].shape == (2, 16, 8, 9)
        assert (info["fast"][0, :, :, 5:] == 0).all()  # the 5-frame video's padding gets no attention


@pytest.mark.parametrize(
    "flags,tokens",
    [
        pytest.param(["--connector", "pooling"], 356, id="pooling"),
        pytest.param(["--branches", "object"], 64, id="object-only"),
        pytest.param(["--branches", "event", "--connector", "qformer"], 128, id="qformer-event"),
    ],
)
def test_init_variants_through_from_pretrained(bases, tmp_path, flags, tokens):
    out = str(tmp_path / "m")
    assert main(["init", "--vision", bases[0], "--llm", bases[1], "--out", out, "--slot-dim", "16",
                 "--proj-dim", "16", "--device", "cpu"] + flags) == 0
    m = SlotVLM.from_pretrained(out, device="cpu").eval()
    assert m.config.num_tokens == tokens
    emb = m.encode_video([torch.randn(7, 3, 224, 224)])
    assert emb.shape == (1, tokens, H_LLM)


def test_pooling_baseline_356_tokens_against_reference():
    c = PoolingConnector(DV, H_LLM, grid_size=G, num_frames=100)
    f = feats(100, 37)
    out = c(f)
    assert out.shape == (2, 356, H_LLM)
    x = f[0].reshape(100, G * G, DV)
    ref = c.proj(torch.cat([x.mean(1), x.mean(0)]))  # 100 frames: temporal tokens are the frame means
    torch.testing.assert_close(out[0], ref, rtol=1e-5, atol=1e-5)
    cfg = SlotVLMConfig(connector="pooling", grid_size=G)
    assert cfg.num_tokens == 356


def test_bad_inputs_raise_valueerror(model):
    with pytest.raises(ValueError, match="features\\[0\\]"):
        model.encode_features([torch.randn(4, 8, 8, DV)])
    with pytest.raises(ValueError, match="slow"):
        model.encode_features(slow=torch.randn(1, 5, G, G, DV), fast=[torch.randn(3, 4, 4, DV)])
    with pytest.raises(ValueError, match="directory"):
        SlotVLM.from_pretrained("/nonexistent/slotvlm")
    with pytest.raises(ValueError, match="connector"):
        SlotVLMConfig(connector="perceiver")
    with pytest.raises(ValueError, match="pixel_values"):
        model.vision_features(torch.randn(2, 3, 64, 64))


# ---------------------------------------------------------------------- LLM side
def test_build_inputs_labels_only_on_answers(model):
    emb = model.encode_features(feats(4, 6))
    answers = ["a man is playing a guitar", "two dogs"]
    inp = model.build_inputs(emb, ["What is happening?", "How many dogs?"], answers)
    tok = model.tokenizer
    for i, a in enumerate(answers):
        lab = inp["labels"][i]
        # the reply is tokenised as it sits in the conversation ("ASSISTANT: a man ..."): its
        # first word keeps the leading space it has in the prompt, not the split form of "a" alone
        after = model.conversation.prompt(["What is happening?", "How many dogs?"][i]).split("<video>")[1]
        n_after = len(tok(after, add_special_tokens=False).input_ids)
        want = tok(after + " " + a, add_special_tokens=False).input_ids[n_after:] + [tok.eos_token_id]
        assert lab[lab != -100].tolist() == want
        assert want[:-1] == tok(" " + a, add_special_tokens=False).input_ids  # byte-level BPE: the word's own ids
        n = int(inp["attention_mask"][i].sum())
        # right padding for training; the answer ends the real tokens
        assert inp["attention_mask"][i, :n].all() and not inp["attention_mask"][i, n:].any()
        assert (lab[:n] != -100).nonzero()[-1].item() == n - 1
        # the video embeddings sit where <video> was, right after the tokens before it
        ids_before = [tok.bos_token_id] + tok(model.conversation.prompt("q").split("<video>")[0],
                                              add_special_tokens=False).input_ids
        k = len(ids_before)
        torch.testing.assert_close(inp["inputs_embeds"][i, k : k + 192], emb[i])
    # the old, split tokenisation really differs for these answers (so the check above can fail)
    assert any(tok(a, add_special_tokens=False).input_ids != tok(" " + a, add_special_tokens=False).input_ids
               for a in answers)
    gen = model.build_inputs(emb, ["q1", "a longer question two"])
    assert "labels" not in gen
    assert gen["attention_mask"][:, -1].all()  # left padding for generation


def test_forward_loss_trains_connector_only(model):
    m = model
    m.train()
    try:
        out = m(features=feats(4, 7), questions=["What is it?", "Why?"], answers=["a red square", "because"])
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)
        out.loss.backward()
        assert all(p.grad is None for p in m.llm.parameters())
        grads = [p.grad for p in m.connector.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads)
    finally:
        m.connector.zero_grad(set_to_none=True)
        m.eval()
    assert not m.vision.training and not m.llm.training


def _greedy_reference(model, embeds, question, steps):
    """Token-by-token argmax with full recomputation (no cache), stopping at EOS."""
    x = model.build_inputs(embeds, [question])["inputs_embeds"]
    ids = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = model.llm(inputs_embeds=x).logits[0, -1].argmax()
            ids.append(int(nxt))
            if nxt == model.tokenizer.eos_token_id:
                break
            x = torch.cat([x, model.llm.get_input_embeddings()(nxt.view(1, 1))], 1)
    return model.tokenizer.decode(ids, skip_special_tokens=True).strip()


def test_generate_matches_greedy_reference_and_batching(model):
    emb = model.encode_features(feats(4, 9, seed=5))
    qs = ["What is happening?", "What color is the square in the middle of the video?"]
    batch = model.generate(emb, qs, max_new_tokens=6)
    for i, q in enumerate(qs):
        alone = model.generate(emb[i : i + 1], [q], max_new_tokens=6)[0]
        assert alone == _greedy_reference(model, emb[i : i + 1], q, 6)
        assert batch[i] == alone  # left padding does not change an answer


def test_slot_ssm_event_encoder():
    pytest.importorskip("slotvlm.nn.slot_ssm", reason="SlotSSM (issue 8) is not merged into this branch")
    c = connector(use_slow=False, event_encoder="slot_ssm")
    f = feats(4, 9)
    out = c(f)
    assert out.shape == (2, 128, H_LLM)
    torch.testing.assert_close(out[:1], c(f[:1]), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- CLI
def test_chat_prints_answer(model, model_dir, clip_path, capsys):
    q = "What is happening in the video?"
    assert main(["chat", "--model", model_dir, "--video", clip_path, "--question", q, "--max-new-tokens", "6",
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.strip()
    expected = model.answer(clip_path, q, max_new_tokens=6)
    assert printed == expected and printed


@pytest.mark.parametrize("stream", [True, False])
def test_chat_system_prompt(model, model_dir, clip_path, capsys, stream):
    """``slotvlm chat --system`` answers with that system prompt: what generate(system=...) gives."""
    q, system = "What is happening in the video?", "Reply like a pirate."
    assert main(["chat", "--model", model_dir, "--video", clip_path, "--question", q, "--max-new-tokens", "6",
                 "--system", system, *([] if stream else ["--no-stream"])]) == 0
    emb = model.encode_video([model.load_video(clip_path)])
    want = model.generate(emb, [q], max_new_tokens=6, system=system)[0]
    assert capsys.readouterr().out.strip() == want
    assert model.build_inputs(emb, [q], system=system)["inputs_embeds"].shape != \
        model.build_inputs(emb, [q])["inputs_embeds"].shape  # the system prompt reached the prompt


def test_chat_interactive_keeps_history(model, model_dir, clip_path, capsys, monkeypatch):
    q1, q2 = "What color is the square?", "How many objects?"
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{q1}\n{q2}\n"))
    assert main(["chat", "--model", model_dir, "--video", clip_path, "--max-new-tokens", "4"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("ASSISTANT:")]
    emb = model.encode_video([model.load_video(clip_path)])
    a1 = model.generate(emb, [q1], max_new_tokens=4)[0]
    a2 = model.generate(emb, [q2], max_new_tokens=4, history=[[(q1, a1)]])[0]
    assert lines == [f"ASSISTANT: {a1}", f"ASSISTANT: {a2}"]
    inp = model.build_inputs(emb, [q2], history=[[(q1, a1)]])
    assert inp["inputs_embeds"].shape[1] > model.build_inputs(emb, [q2])["inputs_embeds"].shape[1]


def test_visualize_writes_png(model, model_dir, clip_path, tmp_path, capsys):
    """The figure draws the maps the connector computes (checked against a separate run of the
    connector), labels frames with their times, and says when a branch is absent."""
    from PIL import Image

    from slotvlm.model.visualize import draw_slots, slot_maps
    from slotvlm.video import load_video, preprocess

    out = tmp_path / "slots.png"
    assert main(["visualize", "--model", model_dir, "--video", clip_path, "--out", str(out), "--cell", "32"]) == 0
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.ndim == 3 and min(img.shape[:2]) > 300 and img.std() > 5
    assert "wrote" in capsys.readouterr().out

    frames, times = load_video(clip_path, fps=model.config.fps)
    with torch.no_grad():
        _, info = model.encode_features([model.vision_features(preprocess(frames))], return_attn=True)
    slow = info["slow"][0].reshape(8, 8, G, G).numpy()
    fast = info["fast"][0].numpy()
    fig = draw_slots(slot_maps(model, clip_path))
    obj, ev = fig.subfigs[1], fig.subfigs[2]
    axes = obj.axes  # row-major: t_d rows x (frame, winner, 8 slots)
    assert len(axes) == 8 * 10
    for j, idx in enumerate(info["slow_indices"][0].tolist()):
        row = axes[j * 10 : (j + 1) * 10]
        assert row[0].get_ylabel() == f"frame {idx}\nt = {times[idx]:.1f} s"
        assert np.array_equal(row[1].images[1].get_array(), slow[j].argmax(0))
        for k in range(8):
            assert np.allclose(row[2 + k].images[1].get_array(), slow[j, k])
    assert [ax.get_title() for ax in axes[2:10]] == [f"slot {k}" for k in range(8)]
    heat = ev.axes[1:17]
    for p, ax in enumerate(heat):
        assert np.allclose(ax.images[0].get_array(), fast[p]) and ax.get_title() == f"position ({p // 4}, {p % 4})"
    x0, x1 = heat[0].images[0].get_extent()[:2]
    assert x0 < times[0] and x1 > times[-1]

    slow_only = SlotVLM.from_pretrained(model_dir, device="cpu")
    slow_only.config.use_fast = False
    from slotvlm.model.slowfast import build_connector

    slow_only.connector = build_connector(slow_only.config, DV, slow_only.config.llm_hidden).eval()
    from slotvlm.model.visualize import figure_for_video

    fig = figure_for_video(slow_only, clip_path)
    assert "event branch absent" in capsys.readouterr().err
    texts = [t.get_text() for ax in fig.subfigs[2].axes for t in ax.texts]
    assert any("event branch absent" in t for t in texts)


@pytest.mark.parametrize("cmd", ["init", "chat", "visualize"])
def test_help_lists_device_and_dtype(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--device" in out and "--dtype" in out


def test_cli_reports_bad_video(model_dir, tmp_path, capsys):
    bad = tmp_path / "not_a_video.mp4"
    bad.write_bytes(b"garbage")
    assert main(["chat", "--model", model_dir, "--video", str(bad), "--question", "q"]) == 2
    assert "slotvlm chat: error:" in capsys.readouterr().err


def test_vicuna_v1_template():
    from slotvlm.conversation import VICUNA_V1_SYSTEM, get_template

    conv = get_template("vicuna_v1")
    assert conv.prompt("Why?") == f"{VICUNA_V1_SYSTEM} USER: <video>\nWhy? ASSISTANT:"
    assert conv.prompt("Then?", history=[("Why?", "Because.")]) == (
        f"{VICUNA_V1_SYSTEM} USER: <video>\nWhy? ASSISTANT: Because.</s>USER: Then? ASSISTANT:"
    )
    assert conv.prompt("In <video> what?").count("<video>") == 1
    with pytest.raises(ValueError, match="conv_template"):
        get_template("llama2")



def test_system_prompt_through_both_templates():
    """``system=`` replaces Vicuna v1's fixed sentence; a tokenizer template gets it as a system
    message (jinja's own rendering, checked against apply_chat_template); a template that refuses
    the system role gets the documented fallback (system text, blank line, first user message)."""
    from slotvlm.conversation import VICUNA_V1_SYSTEM, get_template
    from slotvlm.testing import TINY_CHAT_TEMPLATE, make_tiny_tokenizer

    conv = get_template("vicuna_v1")
    assert conv.prompt("Why?", system="Be brief.") == "Be brief. USER: <video>\nWhy? ASSISTANT:"
    assert VICUNA_V1_SYSTEM not in conv.prompt("Why?", system="Be brief.")

    tok = make_tiny_tokenizer(chat_template=TINY_CHAT_TEMPLATE)
    tpl = get_template("auto", tok)
    want = tok.apply_chat_template([{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "<video>\nWhy?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert tpl.prompt("Why?", system="Be brief.") == want and "<|system|>\nBe brief." in want
    assert "<|system|>" not in tpl.prompt("Why?")

    strict = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
              "{% endif %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant]")
    tpl = get_template("tokenizer", make_tiny_tokenizer(chat_template=strict))
    assert tpl.prompt("Why?", history=[("What?", "A cat.")], system="Be brief.") == (
        "[user] Be brief.\n\n<video>\nWhat?\n[assistant] A cat.\n[user] Why?\n[assistant]")
