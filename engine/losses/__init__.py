"""Every loss of the method: supervised detection/segmentation losses and the distillation losses (paper §2)."""

from engine.core.settings import KDSettings, LossSettings, Objectives, UnlabelledWeights, configure_losses
from engine.losses.balanced_l1 import balanced_l1, detection_box_loss
from engine.losses.distill import (
    feature_mse,
    pdf_distil,
    pdf_location_weights,
    quality_focal_elementwise,
    soft_detection_kd,
    soft_segmentation_kd,
)
from engine.losses.focal import detection_cls_loss, focal_elementwise
from engine.losses.segmentation import class_balance_weights, segmentation_ce_loss, soft_dice_loss

__all__ = [
    "KDSettings",
    "LossSettings",
    "Objectives",
    "UnlabelledWeights",
    "balanced_l1",
    "class_balance_weights",
    "configure_losses",
    "detection_box_loss",
    "detection_cls_loss",
    "feature_mse",
    "focal_elementwise",
    "pdf_distil",
    "pdf_location_weights",
    "quality_focal_elementwise",
    "segmentation_ce_loss",
    "soft_detection_kd",
    "soft_dice_loss",
    "soft_segmentation_kd",
]
