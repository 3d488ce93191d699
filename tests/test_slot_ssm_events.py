"""Slot-VLM's event branch on SlotSSM (``event_encoder="slot_ssm"``): 128 tokens, frames as token
sets (the slot encoder sees all pooled positions of a frame), causal read-out points, config path."""
import torch

from slotvlm.model import SlotVLMConfig, SlowFastSlots
from slotvlm.model.slowfast import _SSMEvents

DV, H_LLM, G = 32, 64, 16


def make_connector(**kw):
    torch.manual_seed(0)
    args = dict(grid_size=G, slot_dim=24, slot_hidden_dim=24, proj_dim=40, max_frames=64, use_slow=False,
                event_encoder="slot_ssm")
    args.update(kw)
    return SlowFastSlots(DV, H_LLM, **args).eval()


def feats(*lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(t, G, G, DV, generator=g) for t in lengths]


def test_segment_ends():
    assert _SSMEvents.segment_ends(32, 16).tolist() == list(range(1, 32, 2))
    assert _SSMEvents.segment_ends(9, 16).tolist()[-1] == 8  # the last point sees the whole video
    assert _SSMEvents.segment_ends(3, 4).tolist() == [0, 0, 1, 2]  # short videos repeat frames


def test_event_tokens_from_ssm_over_time_are_causal():
    c = make_connector()
    seen = []
    c.fast_slots.ssm.layers[0].encoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape))
    video = feats(9)[0]
    slots, attn, lengths = c.encode_fast(slowfast_fast(video))
    assert slots.shape == (1, 16, 8, 24) and attn is None and lengths.tolist() == [9]
    # the encoder sees each frame's 4x4 = 16 pooled positions as one token set
    assert all(shape == (1, 16, 24) for shape in seen) and len(seen) == 9
    # frames from 5 on changed: read-out points that end before frame 5 keep their slots
    later = video.clone()
    later[5:] = torch.randn_like(later[5:])
    slots2, _, _ = c.encode_fast(slowfast_fast(later))
    ends = _SSMEvents.segment_ends(9, 16)
    early = ends < 5
    assert early.any() and (~early).any()
    torch.testing.assert_close(slots2[0, early], slots[0, early], atol=0, rtol=0)
    assert (slots2[0, ~early] - slots[0, ~early]).abs().amax(dim=(-1, -2)).min() > 1e-4


def slowfast_fast(video):
    from slotvlm.model import slowfast_pool_features

    return slowfast_pool_features([video], 8, 4)[1]


def test_connector_from_config_with_slot_ssm_events():
    cfg = SlotVLMConfig(event_encoder="slot_ssm", slot_dim=24, slot_hidden_dim=24, proj_dim=40, max_frames=64,
                        grid_size=G, use_slow=True)
    c = SlowFastSlots.from_config(cfg, DV, H_LLM).eval()
    assert c.event_encoder == "slot_ssm" and isinstance(c.fast_slots, _SSMEvents)
    f = feats(3, 12)
    out = c(f)
    assert out.shape == (2, cfg.num_tokens, H_LLM) and cfg.num_tokens == 64 + 128
    torch.testing.assert_close(out[1:], c(f[1:]), rtol=1e-5, atol=1e-5)  # padding-independent
    # trainable end to end
    out.square().mean().backward()
    ssm_grads = [p.grad for p in c.fast_slots.parameters() if p.requires_grad]
    assert ssm_grads and all(g is not None for g in ssm_grads)
