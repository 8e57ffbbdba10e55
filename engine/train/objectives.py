"""The training objective of each batch: supervised loss of its task plus distillation for the missing task.

Partial multi-task learning (paper §2): a detection batch trains the detection head with its labels and, with
KD, the segmentation head against the segmentation teacher (soft KL) and the shared neck against that teacher's
features (MSE); a segmentation batch does the converse with the detection teacher (soft focal + Balanced L1,
features by MSE or PDF-Distil).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine import losses as L
from engine.models import anchors as anchor_ops


@dataclass
class Teacher:
    """A frozen, pre-trained network for one task (eval mode, no gradients)."""

    net: nn.Module

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, Any]:
        return self.net(images)


class StudentWithAdapters(nn.Module):
    """The student plus its adaptation layers towards each teacher's features, as ONE module.

    DDP wraps this, so the adapters' gradients are averaged across ranks like the student's, and their
    initial weights are broadcast from rank 0. ``forward(images, adapt=task)`` also returns
    ``out["adapted"]``: the neck features mapped to that task's teacher width.
    """

    def __init__(self, student: nn.Module, adapters: nn.ModuleDict) -> None:
        super().__init__()
        self.student = student
        self.adapters = adapters

    def forward(self, images: torch.Tensor, adapt: str | None = None) -> dict[str, Any]:
        out = self.student(images)
        if adapt is not None:
            out = {**out, "adapted": self.adapters[adapt](out["features"])}
        return out


def level_shapes(features: list[torch.Tensor]) -> list[tuple[int, int]]:
    return [(int(f.shape[-2]), int(f.shape[-1])) for f in features]


def detection_supervised(
    out: dict[str, Any],
    boxes: torch.Tensor,
    labels: torch.Tensor,
    anchors: torch.Tensor,
    loss_cfg: dict[str, Any],
    variances: tuple[float, float] = anchor_ops.DEFAULT_VARIANCES,
) -> dict[str, torch.Tensor]:
    """Focal loss on assigned anchors + Balanced L1 on the positives' encoded boxes."""
    assigned, matched = anchor_ops.assign(anchors, boxes, labels)
    target_deltas = anchor_ops.encode(matched, anchors, variances)
    cls = L.detection_cls_loss(
        out["cls_logits"].float(),
        assigned,
        num_classes=out["cls_logits"].shape[-1],
        alpha=loss_cfg["focal_alpha"],
        gamma=loss_cfg["focal_gamma"],
    )
    box = L.detection_box_loss(
        out["box_deltas"].float(),
        target_deltas,
        assigned,
        alpha=loss_cfg["bl1_alpha"],
        gamma=loss_cfg["bl1_gamma"],
        beta=loss_cfg["bl1_beta"],
    )
    weight = loss_cfg["det_weight"]
    return {"det_cls": weight * cls, "det_box": weight * box}


def segmentation_supervised(
    out: dict[str, Any], mask: torch.Tensor, loss_cfg: dict[str, Any]
) -> dict[str, torch.Tensor]:
    return {"seg_ce": loss_cfg["seg_weight"] * L.segmentation_ce_loss(out["seg_logits"].float(), mask)}


def distill_segmentation(
    out: dict[str, Any], teacher: Teacher, images: torch.Tensor, kd_cfg: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """KD for the segmentation head on a detection batch (no masks): soft KL and feature MSE only (paper §2)."""
    t_out = teacher.predict(images)
    terms: dict[str, torch.Tensor] = {}
    if kd_cfg["soft"]:
        terms["kd_seg_soft"] = kd_cfg["soft_seg_weight"] * L.soft_segmentation_kd(
            out["seg_logits"].float(), t_out["seg_logits"].float(), temperature=kd_cfg["temperature"]
        )
    if kd_cfg["feature"] != "none":
        terms["kd_seg_feat"] = L.feature_mse(
            out["adapted"], t_out["features"], weight=kd_cfg["feature_weight"], reduction=kd_cfg["feature_reduction"]
        )
    return terms


def distill_detection(
    out: dict[str, Any], teacher: Teacher, images: torch.Tensor, kd_cfg: dict[str, Any], loss_cfg: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """KD for the detection head on a segmentation batch (no boxes): anchor-paired soft loss, MSE or PDF-Distil."""
    t_out = teacher.predict(images)
    terms: dict[str, torch.Tensor] = {}
    s_cls, s_box = out["cls_logits"].float(), out["box_deltas"].float()
    t_cls, t_box = t_out["cls_logits"].float(), t_out["box_deltas"].float()
    if kd_cfg["soft"]:
        soft = L.soft_detection_kd(
            s_cls,
            s_box,
            t_cls,
            t_box,
            cls_weight=kd_cfg["soft_det_cls_weight"],
            box_weight=kd_cfg["soft_det_box_weight"],
            alpha=loss_cfg["focal_alpha"],
            gamma=kd_cfg["soft_focal_gamma"],
            box_loss={"alpha": loss_cfg["bl1_alpha"], "gamma": loss_cfg["bl1_gamma"], "beta": loss_cfg["bl1_beta"]},
        )
        terms.update({f"kd_det_{k}": v for k, v in soft.items()})
    if kd_cfg["feature"] == "mse":
        terms["kd_det_feat"] = L.feature_mse(
            out["adapted"], t_out["features"], weight=kd_cfg["feature_weight"], reduction=kd_cfg["feature_reduction"]
        )
    elif kd_cfg["feature"] == "pdf":
        pdf = L.pdf_distil(
            out["adapted"],
            t_out["features"],
            s_cls,
            t_cls,
            s_box,
            t_box,
            level_shapes=level_shapes(out["features"]),
            anchors_per_loc=s_cls.shape[1] // sum(h * w for h, w in level_shapes(out["features"])),
            weight=kd_cfg["feature_weight"],
            cls_weight=kd_cfg["pdf_cls_weight"],
            box_weight=kd_cfg["pdf_box_weight"],
        )
        terms.update({f"kd_det_{k}": v for k, v in pdf.items()})
    return terms
