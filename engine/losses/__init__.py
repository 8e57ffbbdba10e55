"""Every loss of the method: supervised detection/segmentation losses and the distillation losses (paper §2)."""

from engine.losses.balanced_l1 import balanced_l1, detection_box_loss
from engine.losses.distill import (
    DistillWeights,
    feature_mse,
    pdf_distil,
    pdf_location_weights,
    soft_detection_kd,
    soft_segmentation_kd,
)
from engine.losses.focal import IGNORE_ANCHOR, NEGATIVE_ANCHOR, detection_cls_loss, focal_elementwise
from engine.losses.segmentation import segmentation_ce_loss

__all__ = [
    "IGNORE_ANCHOR",
    "NEGATIVE_ANCHOR",
    "DistillWeights",
    "balanced_l1",
    "detection_box_loss",
    "detection_cls_loss",
    "feature_mse",
    "focal_elementwise",
    "pdf_distil",
    "pdf_location_weights",
    "segmentation_ce_loss",
    "soft_detection_kd",
    "soft_segmentation_kd",
]
