"""Sigmoid focal loss for the detection classifier (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

The element-wise part is ``torchvision.ops.sigmoid_focal_loss``; this module adds the detection-specific parts:
one-hot targets from anchor assignment, ignored anchors, and RetinaNet's normalisation by the number of positives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from engine.core.errors import InputError
from engine.core.settings import LossSettings
from engine.losses._checks import fp32, require_dims, require_non_negative, require_unit_interval
from engine.models.anchors import IGNORE

_LOSS = LossSettings()


def focal_elementwise(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = _LOSS.focal_alpha, gamma: float = _LOSS.focal_gamma
) -> torch.Tensor:
    """Per-element focal loss α_t·(1−p_t)^γ·BCE in float32; ``targets`` may be soft (in [0, 1]), as for KD.

    Defaults α=0.25, γ=2 are Lin et al.'s; the reference implementation trained with γ=1 (a config value).
    """
    require_unit_interval("alpha", alpha)
    require_non_negative("gamma", gamma)
    logits = fp32(logits)
    return sigmoid_focal_loss(logits, targets.to(logits.dtype), alpha=alpha, gamma=gamma, reduction="none")


def detection_cls_loss(
    cls_logits: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    alpha: float = _LOSS.focal_alpha,
    gamma: float = _LOSS.focal_gamma,
) -> torch.Tensor:
    """Supervised detection classification loss: focal loss summed over non-ignored anchors × classes.

    ``cls_logits`` (B, A, K), ``labels`` (B, A) long: class ≥ 0 positive, -1 negative, -2 ignore. The sum is divided
    by max(number of positive anchors in the batch, 1), as RetinaNet does, so an image without objects still gives
    a finite loss that pushes all its anchors towards background.
    """
    require_dims("cls_logits", cls_logits, 3, "(B, A, num_classes)")
    require_dims("labels", labels, 2, "(B, A)")
    if cls_logits.shape[:2] != labels.shape or cls_logits.shape[2] != num_classes:
        raise InputError(
            f"loss inputs 'cls_logits'/'labels': expected (B, A, {num_classes}) and (B, A), "
            f"found {tuple(cls_logits.shape)} and {tuple(labels.shape)}"
        )
    positive = labels >= 0
    targets = F.one_hot(labels.clamp(min=0), num_classes).to(torch.float32) * positive.unsqueeze(-1)
    loss = focal_elementwise(cls_logits, targets, alpha, gamma)
    loss = torch.where((labels != IGNORE).unsqueeze(-1), loss, torch.zeros_like(loss))
    return loss.sum() / positive.sum().clamp(min=1)
