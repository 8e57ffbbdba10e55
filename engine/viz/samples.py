"""Run a network on a few chips of a chip dataset and keep everything :func:`plot_predictions` draws.

Ground truth comes straight from the chip store (full masks and boxes, whatever task the dataset was chosen for),
predictions from the heads the network has, normalised and decoded exactly as evaluation does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.core.errors import ConfigError, InputError
from engine.data.chipstore import open_chip_dataset
from engine.data.transforms import input_normaliser
from engine.models.postprocess import postprocess_detections
from engine.viz.predictions import plot_predictions


@dataclass
class ChipSamples:
    """Per-chip arrays for :func:`engine.viz.plot_predictions` (lists of equal length; None where a head is absent)."""

    manifest: dict[str, Any]
    titles: list[str] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    gt_masks: list[np.ndarray] = field(default_factory=list)
    gt_boxes: list[np.ndarray] = field(default_factory=list)
    gt_labels: list[np.ndarray] = field(default_factory=list)
    pred_masks: list[np.ndarray | None] = field(default_factory=list)
    pred_boxes: list[np.ndarray | None] = field(default_factory=list)
    pred_scores: list[np.ndarray | None] = field(default_factory=list)
    pred_labels: list[np.ndarray | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def spread_indices(total: int, count: int) -> list[int]:
    """``count`` chip rows spread evenly over ``0..total-1`` (deterministic, so reruns show the same chips)."""
    if total < 1 or count < 1:
        return []
    return sorted(set(np.rint(np.linspace(0, total - 1, min(count, total))).astype(int).tolist()))


@torch.no_grad()
def predict_samples(
    net: nn.Module,
    chip_root: str | os.PathLike[str],
    split: str = "val",
    count: int = 3,
    device: torch.device | str = "cpu",
    score_threshold: float = 0.05,
    nms_iou: float = 0.5,
    label: str = "",
) -> ChipSamples:
    """Ground truth and ``net``'s predictions on ``count`` chips of ``split`` (evaluation normalisation + decoding)."""
    if count < 1:
        raise ConfigError(f"predict_samples: 'count' must be >= 1, found {count}")
    dataset = open_chip_dataset(chip_root)
    if split not in dataset.splits:
        raise InputError(f"{chip_root}: expected split {split!r} in the chip dataset, found {sorted(dataset.splits)}")
    device = torch.device(device)
    rows = spread_indices(dataset.splits[split], count)
    samples = ChipSamples(manifest=dataset.manifest)
    if not rows:
        return samples
    images = np.stack([np.asarray(dataset.images(split)[i]) for i in rows])
    raw = torch.from_numpy(images).permute(0, 3, 1, 2).to(device)
    normalise = input_normaliser(net, dataset.manifest).to(device).eval()
    was_training = net.training
    net.eval()
    out = net(normalise(raw))
    net.train(was_training)
    height, width = images.shape[1:3]
    masks = out["seg_logits"].argmax(1).cpu().numpy().astype(np.uint8) if "seg_logits" in out else None
    detections = None
    if "cls_logits" in out:
        cfg = getattr(net, "cfg", None)
        extra = {"variances": tuple(cfg.box_variances)} if cfg is not None else {}
        anchors = net.anchors_for((height, width), device=device)
        detections = postprocess_detections(
            out["cls_logits"].float(),
            out["box_deltas"].float(),
            anchors,
            image_hw=(height, width),
            score_threshold=score_threshold,
            iou_threshold=nms_iou,
            **extra,
        )
    all_boxes = dataset.boxes(split)
    chips = dataset.chips(split)
    for k, row in enumerate(rows):
        tile = chips[row].get("tile", "?")
        samples.titles.append(f"{label}{split} #{row}\n{tile}".strip())
        samples.images.append(images[k])
        samples.gt_masks.append(np.asarray(dataset.masks(split)[row]))
        samples.gt_boxes.append(all_boxes[row][0])
        samples.gt_labels.append(all_boxes[row][1])
        samples.pred_masks.append(None if masks is None else masks[k])
        det = None if detections is None else {key: v.cpu().numpy() for key, v in detections[k].items()}
        samples.pred_boxes.append(None if det is None else det["boxes"])
        samples.pred_scores.append(None if det is None else det["scores"])
        samples.pred_labels.append(None if det is None else det["labels"])
    return samples


def plot_samples(parts: Sequence[ChipSamples], out_png: str | os.PathLike[str], heading: str = "") -> Path:
    """One picture of the samples of several chip sets (rows in order), via :func:`plot_predictions`."""
    columns = {f.name: [] for f in fields(ChipSamples) if f.name != "manifest"}
    manifests: list[dict[str, Any]] = []
    for part in parts:
        manifests += [part.manifest] * len(part)
        for name, values in columns.items():
            values += getattr(part, name)
    if not manifests:
        raise InputError("plot_samples: no chips to draw (every chip set given has an empty split)")
    titles = columns.pop("titles")
    return plot_predictions(out_png, **columns, manifest=manifests, titles=titles, heading=heading or None)
