"""VOC-style detection AP with all-point interpolation, averaged over IoU thresholds 0.50:0.05:0.95 (REFERENCE §2).

Conventions:
- Score threshold (0.05) and NMS (IoU 0.5) belong to the model's post-processing; every detection passed in counts,
  with no cap per image.
- Matching per image and class, detections in descending score: a detection is a true positive at threshold t when
  its IoU with the chosen ground-truth box is >= t and that box is not matched yet; every ground-truth box is
  matched at most once, so duplicates are false positives. ``matching="voc"`` (default, VOC devkit) chooses the
  ground-truth box of highest IoU and scores a false positive if it is already taken; ``matching="coco"`` chooses
  the highest-IoU box among those still free.
- AP at one threshold: all detections of a class over all images sorted by score (stable for ties, in the order
  they were given), precision made monotone from the right (envelope), summed over the recall steps
  (VOC2010+ all-point interpolation; no 11-point sampling).
- A class without ground truth has an undefined AP (``None``) and is left out of the means; its detections are
  still counted in ``num_pred``. ``map`` is the mean over classes with ground truth of their mean over thresholds;
  ``ap50`` / ``ap75`` are the class means at IoU 0.50 / 0.75 (``None`` if not among the thresholds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from engine.core.classes import DET_CLASSES
from engine.core.errors import ConfigError, InputError
from engine.evaluate.report import gather_distributed, mean_defined

DEFAULT_IOU_THRESHOLDS: np.ndarray = np.round(np.arange(0.5, 0.96, 0.05), 10)
"""0.50, 0.55, ..., 0.95 (rounded so that 0.75 is exactly 0.75)."""

MATCHING_RULES: tuple[str, ...] = ("voc", "coco")


@dataclass
class _ClassRecord:
    """Everything AP needs for one class: detection scores, their TP flags per threshold, the number of GT boxes."""

    scores: list[np.ndarray] = field(default_factory=list)
    true_pos: list[np.ndarray] = field(default_factory=list)  # each (n_det, n_thresholds) bool
    num_gt: int = 0


def _as_array(value: Any, name: str, dtype: type) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise InputError(f"DetectionMeter.update: '{name}' is not numeric: {exc}") from exc
    if not np.all(np.isfinite(array)):
        raise InputError(f"DetectionMeter.update: '{name}' contains NaN or inf")
    return array


def _boxes(value: Any, name: str) -> np.ndarray:
    array = _as_array(value, name, np.float64)
    if array.size == 0:
        return array.reshape(0, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise InputError(f"DetectionMeter.update: '{name}' must have shape (N, 4) xyxy, got {array.shape}")
    return array


def _labels(value: Any, name: str, count: int, num_classes: int, allow_padding: bool) -> np.ndarray:
    array = _as_array(value, name, np.float64).reshape(-1)
    if array.shape[0] != count:
        raise InputError(f"DetectionMeter.update: '{name}' has {array.shape[0]} entries, its boxes have {count}")
    low = -1 if allow_padding else 0
    if array.size and (np.any(array != np.round(array)) or array.min() < low or array.max() >= num_classes):
        raise InputError(
            f"DetectionMeter.update: '{name}' must be integer class ids in {low}..{num_classes - 1}, "
            f"found {array.min():g}..{array.max():g}"
        )
    return array.astype(np.int64)


def match_detections(iou: np.ndarray, thresholds: np.ndarray, matching: str = "voc") -> np.ndarray:
    """True-positive flags (n_det, n_thr) for detections already sorted by descending score.

    ``iou`` is (n_det, n_gt). Greedy: each detection in turn claims a ground-truth box (see module docstring).
    """
    n_det, n_gt = iou.shape
    n_thr = len(thresholds)
    true_pos = np.zeros((n_det, n_thr), dtype=bool)
    if n_gt == 0:
        return true_pos
    taken = np.zeros((n_thr, n_gt), dtype=bool)
    rows = np.arange(n_thr)
    for d in range(n_det):
        if matching == "voc":
            best = np.full(n_thr, int(np.argmax(iou[d])))
            hit = (iou[d, best] >= thresholds) & ~taken[rows, best]
        else:
            candidates = np.where(taken, -1.0, iou[d][None, :])
            best = np.argmax(candidates, axis=1)
            hit = candidates[rows, best] >= thresholds
        true_pos[d] = hit
        taken[rows[hit], best[hit]] = True
    return true_pos


def all_point_ap(true_pos: np.ndarray, num_gt: int) -> float:
    """Area under the precision envelope over recall for TP flags sorted by descending score (VOC2010+)."""
    if num_gt <= 0:
        raise ValueError("AP is undefined without ground truth")
    tp = np.cumsum(true_pos, dtype=np.float64)
    fp = np.cumsum(~true_pos, dtype=np.float64)
    recall = np.concatenate([[0.0], tp / num_gt])
    precision = np.concatenate([[0.0], tp / np.maximum(tp + fp, 1.0)])
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(recall)
    return float(np.sum(steps * envelope[1:]))


def f1_optimal_score(scores: np.ndarray, true_pos: np.ndarray, num_gt: int) -> tuple[float | None, float]:
    """(score threshold, F1) keeping the detections with score >= threshold that maximise F1 against ``num_gt``
    objects; (None, 0.0) when nothing is found. The threshold is the lowest kept score (ties kept together)."""
    if num_gt <= 0 or len(scores) == 0 or not np.any(true_pos):
        return None, 0.0
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], np.cumsum(true_pos[order], dtype=np.float64)
    last_of_tie = np.append(ranked[1:] != ranked[:-1], True)  # a threshold keeps all detections of one score
    kept = np.arange(1, len(ranked) + 1, dtype=np.float64)
    f1 = np.where(last_of_tie, 2.0 * hits / (kept + num_gt), -1.0)
    best = int(np.argmax(f1))
    return float(ranked[best]), float(f1[best])


class DetectionMeter:
    """Collects per-image detections and ground truth; :meth:`compute` gives AP per class and threshold, mAP."""

    def __init__(
        self,
        class_names: Sequence[str] = DET_CLASSES,
        iou_thresholds: Sequence[float] | np.ndarray = DEFAULT_IOU_THRESHOLDS,
        matching: str = "voc",
    ) -> None:
        thresholds = np.round(np.asarray(iou_thresholds, dtype=np.float64).reshape(-1), 10)
        if len(class_names) < 1:
            raise ConfigError("DetectionMeter: class_names is empty, expected at least one class")
        if thresholds.size == 0 or np.any(thresholds <= 0) or np.any(thresholds > 1):
            raise ConfigError(f"DetectionMeter: iou_thresholds must be non-empty values in (0, 1], got {thresholds}")
        if matching not in MATCHING_RULES:
            raise ConfigError(f"DetectionMeter: matching must be one of {MATCHING_RULES}, got {matching!r}")
        self.class_names = tuple(class_names)
        self.iou_thresholds = thresholds
        self.matching = matching
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.records = [_ClassRecord() for _ in self.class_names]
        self.num_images = 0

    def update(
        self,
        pred_boxes: Any,
        pred_scores: Any,
        pred_labels: Any,
        gt_boxes: Any,
        gt_labels: Any,
    ) -> None:
        """Add one image: predictions (N,4) xyxy px, (N,) scores, (N,) class ids; ground truth (K,4), (K,).

        Accepts numpy arrays or torch tensors (any device). Ground-truth labels of -1 are padding (as in the
        collated detection batch) and are dropped.
        """
        boxes = _boxes(pred_boxes, "pred_boxes")
        scores = _as_array(pred_scores, "pred_scores", np.float64).reshape(-1)
        if scores.shape[0] != boxes.shape[0]:
            raise InputError(
                f"DetectionMeter.update: 'pred_scores' has {scores.shape[0]} entries, its boxes have {boxes.shape[0]}"
            )
        n_cls = len(self.class_names)
        labels = _labels(pred_labels, "pred_labels", boxes.shape[0], n_cls, allow_padding=False)
        gt = _boxes(gt_boxes, "gt_boxes")
        gt_cls = _labels(gt_labels, "gt_labels", gt.shape[0], n_cls, allow_padding=True)
        for c, record in enumerate(self.records):
            mine = np.flatnonzero(labels == c)
            gt_c = gt[gt_cls == c]
            record.num_gt += gt_c.shape[0]
            if mine.size == 0:
                continue
            order = mine[np.argsort(-scores[mine], kind="stable")]
            iou = box_iou(torch.from_numpy(boxes[order]), torch.from_numpy(gt_c)).numpy()
            record.scores.append(scores[order])
            record.true_pos.append(match_detections(iou, self.iou_thresholds, self.matching))
        self.num_images += 1

    def merge(self, other: DetectionMeter) -> None:
        """Add another meter's images (e.g. from another process or data shard)."""
        if other.class_names != self.class_names or not np.array_equal(other.iou_thresholds, self.iou_thresholds):
            raise ConfigError("DetectionMeter.merge: the two meters have different classes or IoU thresholds")
        self._absorb(other.records, other.num_images)

    def _absorb(self, records: list[_ClassRecord], num_images: int) -> None:
        for mine, theirs in zip(self.records, records):
            mine.scores.extend(theirs.scores)
            mine.true_pos.extend(theirs.true_pos)
            mine.num_gt += theirs.num_gt
        self.num_images += num_images

    def sync_distributed(self) -> None:
        """Collect the images of all torch.distributed ranks into every rank's meter (no-op when not distributed)."""
        gathered = gather_distributed((self.records, self.num_images))
        if gathered is None:
            return
        self.reset()
        for records, num_images in gathered:
            self._absorb(records, num_images)

    def _class_ap(self, record: _ClassRecord) -> list[float] | None:
        if record.num_gt == 0:
            return None
        if not record.scores:
            return [0.0] * len(self.iou_thresholds)
        scores = np.concatenate(record.scores)
        true_pos = np.concatenate(record.true_pos)[np.argsort(-scores, kind="stable")]
        return [all_point_ap(true_pos[:, t], record.num_gt) for t in range(len(self.iou_thresholds))]

    def _best_f1(self, record: _ClassRecord, iou: float = 0.5) -> tuple[float | None, float]:
        hits = np.flatnonzero(np.isclose(self.iou_thresholds, iou))
        if not record.scores or hits.size == 0:
            return None, 0.0
        return f1_optimal_score(
            np.concatenate(record.scores), np.concatenate(record.true_pos)[:, hits[0]], record.num_gt
        )

    def _at(self, ap: list[float] | None, iou: float) -> float | None:
        hits = np.flatnonzero(np.isclose(self.iou_thresholds, iou))
        return None if ap is None or hits.size == 0 else ap[int(hits[0])]

    def compute(self) -> dict[str, Any]:
        """AP per class and threshold, per-class mAP/AP50/AP75, and their means over classes with ground truth."""
        per_class: dict[str, dict[str, Any]] = {}
        for name, record in zip(self.class_names, self.records):
            ap = self._class_ap(record)
            score_thresh, f1 = self._best_f1(record)
            per_class[name] = {
                "ap": ap,
                "map": None if ap is None else float(np.mean(ap)),
                "ap50": self._at(ap, 0.5),
                "ap75": self._at(ap, 0.75),
                "num_gt": record.num_gt,
                "num_pred": int(sum(len(s) for s in record.scores)),
                "class_score_thresh": score_thresh,  # the map's threshold for this class (IoU 0.5, best F1)
                "f1": f1,
            }
        return {
            "classes": list(self.class_names),
            "iou_thresholds": [float(t) for t in self.iou_thresholds],
            "matching": self.matching,
            "map": mean_defined([v["map"] for v in per_class.values()]),
            "ap50": mean_defined([v["ap50"] for v in per_class.values()]),
            "ap75": mean_defined([v["ap75"] for v in per_class.values()]),
            "per_class": per_class,
            "num_images": self.num_images,
        }
