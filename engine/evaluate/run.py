"""Evaluate a network on chip datasets: detection mAP on the detection set, mIoU on the (eroded) segmentation set."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.core.bands import input_order
from engine.core.errors import InputError
from engine.core.progress import Progress, check_cancel
from engine.data.datasets import make_eval_loader
from engine.data.transforms import input_normaliser
from engine.evaluate.detection import DetectionMeter
from engine.evaluate.segmentation import SegmentationMeter
from engine.models.postprocess import postprocess_detections


def _flatten(prefix: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """Scalar metrics under ``det_``/``seg_`` names (for logs and tables); nested ones kept under ``{prefix}``."""
    flat: dict[str, Any] = {prefix: metrics}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and value is not None:
            flat[f"{prefix}_{key}"] = float(value)
    return flat


def read_order(net: nn.Module, manifest: dict[str, Any], bands: Sequence[str] | None, root: Any) -> list[int]:
    """Which of the chips' bands the network reads, in order (:func:`engine.core.bands.input_order`)."""
    wanted = list(bands or getattr(net, "input_bands", None) or manifest["bands"])
    order = input_order(manifest["bands"], wanted)
    if order is None:
        raise InputError(f"{root}: expected chips with the model's bands {wanted}, found {manifest['bands']}")
    return order


@torch.no_grad()
def evaluate_model(
    net: nn.Module,
    det_root: str | Path | None,
    seg_root: str | Path | None,
    split: str = "val",
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    score_thresh: float = 0.05,
    nms_iou: float = 0.5,
    max_chips: int | None = None,
    progress: Progress | None = None,
    shard: tuple[int, int] = (0, 1),
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    bands: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Metrics of ``net`` (EMA weights in training) on ``split``: ``det_map``, ``det_ap50``, ``seg_miou``, …

    ``shard=(rank, world_size)`` under DDP: each rank evaluates every world_size-th chip and the meters are
    merged across ranks, so every rank returns the metrics of the whole split. ``normalization`` = (mean, std)
    the network was trained with; default :func:`input_normalization` of ``net``. ``bands``: the network's band
    names (default ``net.input_bands``, from its checkpoint): chips with those names permuted, or within a larger
    product, are read by name, as training reads them.
    """
    device = torch.device(device)
    was_training = net.training
    net.eval()
    results: dict[str, Any] = {}
    jobs = [(task, root) for task, root in (("det", det_root), ("seg", seg_root)) if root is not None]
    for job_index, (task, root) in enumerate(jobs):
        loader = make_eval_loader(root, split, task, batch_size, shard=shard, max_chips=max_chips)
        manifest = loader.dataset.dataset.manifest  # the Subset's chip dataset: manifest read once
        normalise = input_normaliser(net, manifest, normalization).to(device).eval()
        order = read_order(net, manifest, bands, root)
        world = shard[1]
        anchors: dict[tuple[int, int], torch.Tensor] = {}
        total = len(loader)
        if task == "det":
            meter: Any = DetectionMeter(manifest["det_classes"])
        else:
            meter = SegmentationMeter(len(manifest["seg_classes"]), class_names=manifest["seg_classes"])
        for index, batch in enumerate(loader):
            check_cancel(progress)
            images = normalise(batch["image"][:, order].to(device))
            out = net(images)
            if task == "det":
                hw = (int(images.shape[-2]), int(images.shape[-1]))
                if hw not in anchors:
                    anchors[hw] = net.anchors_for(hw, device=device)
                detections = postprocess_detections(
                    out["cls_logits"].float(),
                    out["box_deltas"].float(),
                    anchors[hw],
                    image_hw=tuple(images.shape[-2:]),
                    score_threshold=score_thresh,
                    iou_threshold=nms_iou,
                    variances=net.cfg.box_variances,
                )
                for det, boxes, labels in zip(detections, batch["boxes"], batch["labels"]):
                    meter.update(det["boxes"], det["scores"], det["labels"], boxes, labels)
            else:
                meter.update(out["seg_logits"].argmax(1).cpu(), batch["eroded"])
            if progress is not None:
                progress.report((job_index + (index + 1) / total) / len(jobs), f"evaluating {task}")
        if world > 1:
            meter.sync_distributed()
        results |= _flatten(task, meter.compute())
    net.train(was_training)
    return results
