"""The training objective of each batch: supervised loss of its task plus distillation for the missing task.

Partial multi-task learning (paper §2): a detection batch trains the detection head with its labels and, with
KD, the segmentation head against the segmentation teacher (soft KL) and the shared neck against that teacher's
features (MSE); a segmentation batch does the converse with the detection teacher (soft focal + Balanced L1,
features by MSE or PDF-Distil). An unlabelled batch (``data.unlabelled``) gets both distillations and no
supervised loss. Only the heads that receive a loss from a batch run (:func:`heads_for`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine import losses as L
from engine.core.settings import KDSettings, LossSettings, Objectives
from engine.models import anchors as anchor_ops

STREAMS = ("det", "seg", "unlabelled")
"""Batch kinds of one optimizer step, in the order they are drawn and back-propagated."""


@dataclass
class Teacher:
    """A frozen, pre-trained network for one task (eval mode, no gradients), with what its inputs were in training:
    ``bands`` (names) and ``mean``/``std`` (in [0, 1] units); None for a teacher fed the student's inputs."""

    net: nn.Module
    bands: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @torch.no_grad()
    def predict(self, images: torch.Tensor, heads: tuple[str, ...] | None = None) -> dict[str, Any]:
        return self.net(images, heads=heads)


class StudentWithAdapters(nn.Module):
    """The student plus its adaptation layers towards each teacher's features, as ONE module.

    DDP wraps this, so the adapters' gradients are averaged across ranks like the student's, and their
    initial weights are broadcast from rank 0. ``forward(images, heads, adapt)`` runs the named heads and also
    returns ``out["adapted"][task]`` for each task in ``adapt``: the neck features mapped to that teacher's width.
    """

    def __init__(self, student: nn.Module, adapters: nn.ModuleDict) -> None:
        super().__init__()
        self.student = student
        self.adapters = adapters

    def forward(
        self, images: torch.Tensor, heads: tuple[str, ...] | None = None, adapt: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        out = self.student(images, heads=heads)
        if adapt:
            out = {**out, "adapted": {task: self.adapters[task](out["features"]) for task in adapt}}
        return out


def level_shapes(features: list[torch.Tensor]) -> list[tuple[int, int]]:
    return [(int(f.shape[-2]), int(f.shape[-1])) for f in features]


def teacher_heads(task: str, kd: KDSettings) -> tuple[str, ...]:
    """Heads of the ``task`` teacher whose outputs distillation reads (none for feature-only MSE)."""
    if task == "seg":
        return ("seg",) if kd.soft else ()
    return ("det",) if kd.soft or kd.feature == "pdf" else ()


def heads_for(stream: str, kd: KDSettings) -> tuple[str, ...]:
    """The student heads that receive a loss from a batch of ``stream`` (det, seg or unlabelled).

    A head without a loss does not run: in train mode it would update its BatchNorm statistics on the other
    domain's images (and cost compute) for nothing. Distillation gives the other head a loss when it reads the
    head's outputs (soft KD; PDF-Distil for detection), not when it only compares features (MSE).
    """
    if not kd.enabled:
        return (stream,) if stream != "unlabelled" else ()
    kd_heads = {task: teacher_heads(task, kd) for task in ("det", "seg")}
    if stream == "det":
        return ("det", *kd_heads["seg"])
    if stream == "seg":
        return (*kd_heads["det"], "seg")
    return (*kd_heads["det"], *kd_heads["seg"])


def adapted_for(stream: str, kd: KDSettings) -> tuple[str, ...]:
    """Teachers whose features the student's neck is compared with on a batch of ``stream``."""
    if kd.feature == "none":
        return ()
    return {"det": ("seg",), "seg": ("det",), "unlabelled": ("det", "seg")}[stream]


def detection_supervised(
    out: dict[str, Any],
    boxes: torch.Tensor,
    labels: torch.Tensor,
    anchors: torch.Tensor,
    loss: LossSettings,
    variances: tuple[float, float] = anchor_ops.DEFAULT_VARIANCES,
) -> dict[str, torch.Tensor]:
    """Focal loss on assigned anchors + Balanced L1 on the positives' encoded boxes."""
    assigned, matched = anchor_ops.assign(anchors, boxes, labels)
    target_deltas = anchor_ops.encode(matched, anchors, variances)
    cls = L.detection_cls_loss(
        out["cls_logits"].float(),
        assigned,
        num_classes=out["cls_logits"].shape[-1],
        alpha=loss.focal_alpha,
        gamma=loss.focal_gamma,
    )
    box = L.detection_box_loss(out["box_deltas"].float(), target_deltas, assigned, loss.box_loss)
    return {"det_cls": loss.det_weight * cls, "det_box": loss.det_weight * box}


@functools.lru_cache(maxsize=8)
def _weights_on(class_weights: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """The run's class weights as a tensor on its device, built once (not a host-to-device copy every step)."""
    return torch.tensor(class_weights, dtype=torch.float32, device=device)


def segmentation_supervised(
    out: dict[str, Any], mask: torch.Tensor, loss: LossSettings, class_weights: tuple[float, ...] | None = None
) -> dict[str, torch.Tensor]:
    weights = None if class_weights is None else _weights_on(class_weights, mask.device)
    ce = L.segmentation_ce_loss(out["seg_logits"].float(), mask, class_weights=weights)
    terms = {"seg_ce": loss.seg_weight * ce}
    if loss.seg_dice_weight > 0:
        terms["seg_dice"] = loss.seg_dice_weight * L.soft_dice_loss(out["seg_logits"].float(), mask)
    return terms


def distill_segmentation(out: dict[str, Any], t_out: dict[str, Any], kd: KDSettings) -> dict[str, torch.Tensor]:
    """KD towards the segmentation teacher's outputs ``t_out``: soft KL and feature MSE only (paper §2)."""
    terms: dict[str, torch.Tensor] = {}
    if kd.soft:
        terms["kd_seg_soft"] = kd.soft_seg_weight * L.soft_segmentation_kd(
            out["seg_logits"].float(), t_out["seg_logits"].float(), temperature=kd.temperature
        )
    if kd.feature != "none":
        terms["kd_seg_feat"] = L.feature_mse(
            out["adapted"]["seg"], t_out["features"], weight=kd.feature_weight, reduction=kd.feature_reduction
        )
    return terms


def distill_detection(
    out: dict[str, Any], t_out: dict[str, Any], kd: KDSettings, loss: LossSettings
) -> dict[str, torch.Tensor]:
    """KD towards the detection teacher's outputs ``t_out``: anchor-paired soft loss, MSE or PDF-Distil."""
    terms: dict[str, torch.Tensor] = {}
    if kd.soft or kd.feature == "pdf":
        s_cls, s_box = out["cls_logits"].float(), out["box_deltas"].float()
        t_cls, t_box = t_out["cls_logits"].float(), t_out["box_deltas"].float()
    if kd.soft:
        soft = L.soft_detection_kd(
            s_cls,
            s_box,
            t_cls,
            t_box,
            cls_weight=kd.soft_det_cls_weight,
            box_weight=kd.soft_det_box_weight,
            alpha=loss.focal_alpha,
            gamma=kd.soft_focal_gamma,
            box_loss=loss.box_loss,
            form=kd.soft_det_form,
        )
        terms.update({f"kd_det_{k}": v for k, v in soft.items()})
    if kd.feature == "mse":
        terms["kd_det_feat"] = L.feature_mse(
            out["adapted"]["det"], t_out["features"], weight=kd.feature_weight, reduction=kd.feature_reduction
        )
    elif kd.feature == "pdf":
        shapes = level_shapes(out["features"])
        pdf = L.pdf_distil(
            out["adapted"]["det"],
            t_out["features"],
            s_cls,
            t_cls,
            s_box,
            t_box,
            level_shapes=shapes,
            anchors_per_loc=s_cls.shape[1] // sum(h * w for h, w in shapes),
            weight=kd.feature_weight,
            cls_weight=kd.pdf_cls_weight,
            box_weight=kd.pdf_box_weight,
        )
        terms.update({f"kd_det_{k}": v for k, v in pdf.items()})
    return terms


def _scaled(terms: dict[str, torch.Tensor], weight: float, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}{name}": weight * value for name, value in terms.items()}


def batch_objective(
    model: nn.Module,
    stream: str,
    images: torch.Tensor,
    batch: dict[str, Any],
    teachers: dict[str, Teacher],
    settings: Objectives,
    anchors_for: Callable[[torch.Tensor], torch.Tensor],
    variances: tuple[float, float],
    teacher_images: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Every loss term of one batch of ``stream``: its supervised loss (none for unlabelled) plus distillation.

    ``model`` is the (possibly DDP-wrapped) :class:`StudentWithAdapters`. ``teacher_images[task]``: the same batch
    as the ``task`` teacher sees it (its bands, its normalisation; ``images`` when not given). Terms of the
    unlabelled stream are named ``unlabelled_kd_…`` and scaled by ``kd.unlabelled.det_weight`` / ``seg_weight``.
    """
    kd, loss = settings.kd, settings.loss
    seen_by = teacher_images or {}
    out = model(images, heads=heads_for(stream, kd), adapt=adapted_for(stream, kd))
    terms: dict[str, torch.Tensor] = {}
    if stream == "det":
        terms |= detection_supervised(out, batch["boxes"], batch["labels"], anchors_for(images), loss, variances)
    elif stream == "seg":
        terms |= segmentation_supervised(out, batch["mask"], loss, settings.seg_class_weights)
    if not kd.enabled:
        return terms
    if stream in ("det", "unlabelled"):
        t_seg = teachers["seg"].predict(seen_by.get("seg", images), heads=teacher_heads("seg", kd))
        seg_terms = distill_segmentation(out, t_seg, kd)
        terms |= seg_terms if stream == "det" else _scaled(seg_terms, kd.unlabelled.seg_weight, "unlabelled_")
    if stream in ("seg", "unlabelled"):
        t_det = teachers["det"].predict(seen_by.get("det", images), heads=teacher_heads("det", kd))
        det_terms = distill_detection(out, t_det, kd, loss)
        terms |= det_terms if stream == "seg" else _scaled(det_terms, kd.unlabelled.det_weight, "unlabelled_")
    return terms
