"""Segmentation metrics from a confusion matrix accumulated batch by batch on the device (REFERENCE §2).

Conventions (those of mmseg and the ISPRS benchmark):
- The caller passes the **eroded** ground truth (``batch["eroded"]``); pixels equal to ``ignore_index`` are skipped.
- Rows of the confusion matrix are ground truth, columns are predictions.
- IoU_c = TP / (TP + FP + FN), F1_c = 2TP / (2TP + FP + FN). A class absent from both ground truth and prediction
  has an undefined IoU/F1 (``None``) and is left out of ``miou`` / ``mean_f1``. A class absent from the ground
  truth but predicted somewhere has IoU = F1 = 0 and **counts** in the means (its false positives are real errors).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from engine.core.classes import IGNORE_INDEX, SEG_CLASSES
from engine.core.errors import ConfigError, InputError
from engine.evaluate.report import gather_distributed, mean_defined


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise InputError(f"SegmentationMeter.update: '{name}' must be a torch tensor or numpy array, got {type(value)}")


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> list[float | None]:
    """Element-wise ratio with ``None`` where the denominator is 0 (undefined, excluded from means)."""
    return [float(n) / float(d) if d > 0 else None for n, d in zip(numerator, denominator)]


class SegmentationMeter:
    """Accumulates a ``num_classes``² confusion matrix over batches; :meth:`compute` turns it into metrics."""

    def __init__(
        self,
        num_classes: int = len(SEG_CLASSES),
        ignore_index: int = IGNORE_INDEX,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if num_classes < 1:
            raise ConfigError(f"SegmentationMeter: num_classes must be >= 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ConfigError(
                f"SegmentationMeter: ignore_index {ignore_index} collides with a class id (0..{num_classes - 1})"
            )
        if class_names is None:
            class_names = SEG_CLASSES if num_classes == len(SEG_CLASSES) else [f"class_{i}" for i in range(num_classes)]
        if len(class_names) != num_classes:
            raise ConfigError(
                f"SegmentationMeter: class_names has {len(class_names)} names, expected num_classes={num_classes}"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = tuple(class_names)
        self.confusion: torch.Tensor = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        """Forget everything accumulated so far (e.g. between epochs)."""
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add one batch: ``pred`` is class ids (B,H,W) or logits (B,C,H,W); ``target`` is (B,H,W) ids, 255 ignored.

        Unbatched (H,W) / (C,H,W) inputs are accepted too. Stays on the tensors' device (one host sync per call
        for the range check), so a GPU evaluation loop does not copy masks to the host.
        """
        pred_t = _as_tensor(pred, "pred")
        target_t = _as_tensor(target, "target")
        if target_t.dim() not in (2, 3):
            raise InputError(
                f"SegmentationMeter.update: target must be (B,H,W) or (H,W), got shape {tuple(target_t.shape)}"
            )
        if target_t.dtype.is_floating_point or target_t.dtype == torch.bool:
            raise InputError(
                f"SegmentationMeter.update: target must hold integer class ids, got dtype {target_t.dtype}"
            )
        if pred_t.dim() == target_t.dim() + 1:
            if pred_t.shape[-3] != self.num_classes:
                raise InputError(
                    f"SegmentationMeter.update: logits have {pred_t.shape[-3]} channels, expected {self.num_classes}"
                )
            pred_t = pred_t.argmax(dim=-3)
        elif pred_t.dtype.is_floating_point or pred_t.dtype == torch.bool:
            raise InputError(
                f"SegmentationMeter.update: pred of shape {tuple(pred_t.shape)} must be integer class ids "
                f"(or logits with one extra class dimension), got dtype {pred_t.dtype}"
            )
        if pred_t.shape != target_t.shape:
            raise InputError(
                f"SegmentationMeter.update: prediction shape {tuple(pred_t.shape)} does not match "
                f"target shape {tuple(target_t.shape)}"
            )
        target_t = target_t.to(pred_t.device)
        n = self.num_classes
        valid = target_t != self.ignore_index
        truth = target_t[valid].long()
        guess = pred_t[valid].long()
        bad = (truth < 0) | (truth >= n) | (guess < 0) | (guess >= n)
        if bool(bad.any()):
            raise InputError(
                f"SegmentationMeter.update: class ids must be in 0..{n - 1} (or {self.ignore_index} in target); "
                f"found target {int(truth.min())}..{int(truth.max())}, pred {int(guess.min())}..{int(guess.max())}"
            )
        counts = torch.bincount(truth * n + guess, minlength=n * n).reshape(n, n)
        if self.confusion.device != counts.device:
            self.confusion = self.confusion.to(counts.device)
        self.confusion += counts

    def merge(self, other: SegmentationMeter) -> None:
        """Add another meter's counts (e.g. from another process or data shard)."""
        if other.num_classes != self.num_classes:
            raise ConfigError(f"SegmentationMeter.merge: {other.num_classes} classes vs {self.num_classes}")
        self.confusion = self.confusion + other.confusion.to(self.confusion.device)

    def sync_distributed(self) -> None:
        """Sum the confusion matrices of all torch.distributed ranks (no-op when not distributed)."""
        gathered = gather_distributed(self.confusion.cpu())
        if gathered is not None:
            self.confusion = torch.stack(gathered).sum(dim=0).to(self.confusion.device)

    def compute(self) -> dict[str, Any]:
        """Per-class IoU and F1 (``None`` when undefined), mIoU, overall accuracy, mean F1, confusion matrix."""
        cm = self.confusion.cpu().numpy().astype(np.int64)
        tp = np.diag(cm)
        gt_total = cm.sum(axis=1)
        pred_total = cm.sum(axis=0)
        iou = _ratio(tp, gt_total + pred_total - tp)
        f1 = _ratio(2 * tp, gt_total + pred_total)
        total = int(cm.sum())
        return {
            "classes": list(self.class_names),
            "iou": dict(zip(self.class_names, iou)),
            "miou": mean_defined(iou),
            "oa": float(tp.sum()) / total if total else None,
            "f1": dict(zip(self.class_names, f1)),
            "mean_f1": mean_defined(f1),
            "num_pixels": total,
            "confusion": cm.tolist(),
        }
