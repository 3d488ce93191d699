"""Do Slot-VLM's slots find the objects and events of a synthetic video? (``slotvlm eval-slots``)

On a ``slotvlm synth`` folder, whose ``meta.json`` describes every scene exactly:

- **Object branch**: for each of the t_d frames the object branch samples, its attention masks
  ``[N_s, G, G]`` (softmax over slots) are compared with the frame's ground-truth instance masks
  (:func:`slotvlm.data.synth.render_masks` at the frame's timestamp). ``resolution="frame"``
  (default) **upsamples** the masks bilinearly to the video's frame size and takes the argmax over
  slots; ``resolution="patch"`` instead **downsamples the ground truth** to the G×G patch grid
  (each patch takes the label covering most of it). Metrics: FG-ARI, ARI, mBO, mIoU per frame
  (:mod:`slotvlm.metrics`), averaged over frames with at least one object.
- **Event branch**: its attention ``[P, N_f, T]`` is averaged over the P pooled positions and each
  frame is given to its winning event slot; that temporal segmentation is compared (ARI over the
  T frames) with the known event intervals, cut at every appearance and colour change
  (:func:`slotvlm.data.synth.event_times`). Videos whose sampled frames fall in one interval only
  are skipped (a segmentation with one segment has nothing to score).

Frames are decoded at the model's ``fps`` exactly as ``slotvlm predict`` does and the synthetic
videos are square, so CLIP's centre crop keeps the whole frame and the masks line up with it.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

RESOLUTIONS = ("frame", "patch")
SPLITS = ("test", "train", "all")


def _scenes(data: str, split: str) -> list:
    from ..data.synth import scene_from_dict  # noqa: PLC0415

    path = os.path.join(data, "meta.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data={data!r} is not a `slotvlm synth` folder (no meta.json)")
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    scenes = [scene_from_dict(s) for s in meta["scenes"]]
    n_train = int(meta["train_videos"])
    return {"train": scenes[:n_train], "test": scenes[n_train:], "all": scenes}[split]


def _gt_to_patches(masks: np.ndarray, grid: int) -> torch.Tensor:
    """int ``[T, S, S]`` → int ``[T, G, G]``: each patch gets the label covering most of its area."""
    m = torch.from_numpy(masks)
    one_hot = torch.nn.functional.one_hot(m, int(m.max()) + 1).permute(0, 3, 1, 2).float()
    return torch.nn.functional.adaptive_avg_pool2d(one_hot, grid).argmax(1)


@torch.no_grad()
def evaluate_slots(model, data: str, *, split: str = "test", resolution: str = "frame",
                   max_videos: int | None = None, progress: bool = True) -> dict:
    """Object- and event-slot metrics of ``model`` (a :class:`slotvlm.SlotVLM` with the SlowFast
    connector) on the ``split`` videos of the synth folder ``data``. Returns a dict::

        videos, object_frames, object_fg_ari, object_ari, object_mbo, object_miou,
        event_videos, event_ari, resolution, split, failed, failed_videos

    A video that is missing or cannot be decoded is recorded in ``failed_videos``
    (``[{"video_id", "error"}]``) and skipped; the others are still scored (``videos`` counts the
    scored ones).

    (``object_*`` only with the object branch, ``event_*`` only with the event branch; NaN when
    nothing could be scored).
    """
    from tqdm import tqdm  # noqa: PLC0415

    from .. import metrics  # noqa: PLC0415
    from ..data.synth import event_times, render_masks  # noqa: PLC0415
    from ..model.slowfast import SlowFastSlots  # noqa: PLC0415
    from ..video import VideoError, load_video, preprocess  # noqa: PLC0415

    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if max_videos is not None and (not isinstance(max_videos, int) or max_videos < 1):
        raise ValueError(f"max_videos must be an int >= 1, got {max_videos!r}")
    if not isinstance(model.connector, SlowFastSlots):
        raise ValueError(f"eval-slots needs a slot connector, this model's connector is {model.config.connector!r}")
    scenes = _scenes(data, split)[:max_videos]
    if not scenes:
        raise ValueError(f"data={data!r} has no {split} videos")
    cfg = model.config
    was = model.training
    model.eval()
    obj = {"fg_ari": [], "ari": [], "mbo": [], "miou": []}
    event = []
    failed: list[dict] = []
    info: dict = {}
    for scene in tqdm(scenes, desc="eval-slots", unit="video", disable=not progress):
        path = os.path.join(data, "videos", f"{scene.video_id}.mp4")
        try:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} is missing (meta.json lists {scene.video_id})")
            frames, ts = load_video(path, fps=cfg.fps, max_frames=cfg.max_frames)
        except (OSError, VideoError) as exc:
            failed.append({"video_id": scene.video_id, "error": str(exc)})
            continue
        feats = model.vision_features(preprocess(frames, size=cfg.image_size))
        _, info = model.encode_features([feats], return_attn=True)
        ts = np.asarray(ts, dtype=np.float64)
        if info.get("slow") is not None:
            attn = info["slow"][0].float().cpu()  # [t_d, N_s, G*G]
            idx = info["slow_indices"][0].cpu().numpy()
            g = cfg.grid_size
            gt = render_masks(scene, ts[idx])  # [t_d, S, S]
            attn = attn.view(attn.shape[0], attn.shape[1], g, g)
            if resolution == "frame":
                pred = torch.nn.functional.interpolate(attn, size=gt.shape[-2:], mode="bilinear", align_corners=False)
                true = torch.from_numpy(gt)
            else:
                pred, true = attn, _gt_to_patches(gt, g)
            labels = pred.argmax(1)
            obj["fg_ari"].append(metrics.fg_ari(true, labels))
            obj["ari"].append(metrics.adjusted_rand_index(true, labels))
            obj["mbo"].append(metrics.mean_best_overlap(true, labels))
            obj["miou"].append(metrics.matched_miou(true, labels))
        if info.get("fast") is not None:
            length = int(info["lengths"][0])
            seg = info["fast"][0, :, :, :length].float().mean(0).argmax(0)  # [T]
            truth = np.searchsorted(np.asarray(event_times(scene)), ts[:length], side="right")
            if len(np.unique(truth)) > 1:
                event.append(float(metrics.adjusted_rand_index(torch.from_numpy(truth)[None], seg[None])[0]))
    model.train(was)
    out = {"videos": len(scenes) - len(failed), "split": split, "resolution": resolution,
           "failed": len(failed), "failed_videos": failed}
    if obj["fg_ari"]:
        vals = {k: torch.cat(v).numpy() for k, v in obj.items()}
        out["object_frames"] = int(np.isfinite(vals["fg_ari"]).sum())
        for k, v in vals.items():
            out[f"object_{k}"] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
    if info.get("fast") is not None:
        out["event_videos"] = len(event)
        out["event_ari"] = float(np.mean(event)) if event else float("nan")
    return out
