"""Knowledge-distillation losses: a frozen teacher supervises the task a batch has no labels for (paper §2).

Every function detaches the teacher's tensors itself, so a caller cannot leak gradients into the teacher, and
computes in float32 whatever autocast produced. Feature inputs are lists of per-level (B, C, H, W) tensors (the
student's after its adaptation layer); detection inputs are (B, A, K) logits and (B, A, 4) deltas flattened
level-major, then y, x, then the anchors of a location (docs/ARCHITECTURE.md, "Model interface").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Literal

import torch
import torch.nn.functional as F

from engine.core.errors import ConfigError, InputError
from engine.losses._checks import (
    fp32,
    require_dims,
    require_level_layout,
    require_non_negative,
    require_positive,
    require_same_shape,
)
from engine.losses.balanced_l1 import balanced_l1
from engine.losses.focal import focal_elementwise

FeatureReduction = Literal["level_mean", "pooled"]


@dataclass(frozen=True)
class DistillWeights:
    """Every distillation weight and parameter in one place; defaults are REFERENCE §2's unless noted.

    ``soft_det_cls`` 5e3 multiplies a mean over all anchor×class elements (tiny per element), as in the reference.
    ``focal_gamma`` defaults to Lin et al.'s 2 (the reference ran γ=1). ``soft_seg`` and ``temperature`` have no
    working reference value (its segmentation KD was broken): 1 makes the KL term comparable to the supervised CE.
    """

    soft_det_cls: float = 5e3
    soft_det_box: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    soft_seg: float = 1.0
    temperature: float = 1.0
    feat_mse: float = 5.0
    pdf_feat: float = 5.0
    pdf_cls: float = 1.0
    pdf_box: float = 1.0

    def __post_init__(self) -> None:
        for field in fields(self):
            require_non_negative(field.name, getattr(self, field.name))
        require_positive("temperature", self.temperature)


def soft_detection_kd(
    s_cls: torch.Tensor,
    s_box: torch.Tensor,
    t_cls: torch.Tensor,
    t_box: torch.Tensor,
    cls_weight: float = 5e3,
    box_weight: float = 1.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
    box_loss: Mapping[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Soft detection loss: teacher and student share the anchor layout, so predictions pair anchor by anchor.

    ``soft_cls`` = cls_weight · mean over all anchor×class elements of focal(student logit, target σ(teacher logit));
    ``soft_box`` = box_weight · mean over all anchors×4 of Balanced L1(student delta − teacher delta), with
    ``box_loss`` = {alpha, gamma, beta} of the supervised Balanced L1 (its defaults when None).
    No matching and no NMS (REFERENCE §2). Note the cls term is not 0 for identical predictions: a soft-target
    BCE bottoms out at the teacher's entropy; only its gradient vanishes there.
    """
    require_dims("s_cls", s_cls, 3, "(B, A, num_classes)")
    require_same_shape("s_cls", s_cls, "t_cls", t_cls)
    require_dims("s_box", s_box, 3, "(B, A, 4)")
    require_same_shape("s_box", s_box, "t_box", t_box)
    target = fp32(t_cls.detach()).sigmoid()
    cls = focal_elementwise(s_cls, target, alpha, gamma).mean()
    box = balanced_l1(s_box, t_box.detach(), **(box_loss or {})).mean()
    return {"soft_cls": cls_weight * cls, "soft_box": box_weight * box}


def soft_segmentation_kd(
    s_logits: torch.Tensor,
    t_logits: torch.Tensor,
    temperature: float = 1.0,
    ignore_mask: torch.Tensor | None = None,
    weight: float = 1.0,
) -> torch.Tensor:
    """weight · T² · KL(softmax(t/T) ‖ softmax(s/T)) summed over classes, averaged over non-ignored pixels.

    Hinton et al.'s distillation loss per pixel; the T² keeps gradient magnitudes independent of T. ``ignore_mask``
    (B, H, W) bool marks pixels to exclude (padding, nodata); all pixels excluded → 0. The reference applied
    ``nn.KLDivLoss`` to raw logits, which is not a divergence at all; this is the correct form.
    """
    require_positive("temperature", temperature)
    require_dims("s_logits", s_logits, 4, "(B, C, H, W)")
    require_same_shape("s_logits", s_logits, "t_logits", t_logits)
    log_p_s = F.log_softmax(fp32(s_logits) / temperature, dim=1)
    log_p_t = F.log_softmax(fp32(t_logits.detach()) / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(dim=1)  # (B, H, W)
    if ignore_mask is None:
        return weight * temperature**2 * kl.mean()
    require_same_shape("ignore_mask", ignore_mask, "s_logits[:, 0]", s_logits[:, 0])
    keep = ~ignore_mask.bool()
    kl = torch.where(keep, kl, torch.zeros((), device=kl.device))
    return weight * temperature**2 * kl.sum() / keep.sum().clamp(min=1)


def _check_feature_lists(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> None:
    """Raise InputError unless both lists are non-empty, of equal length, with equal (B, C, H, W) per level."""
    if len(student_feats) == 0 or len(student_feats) != len(teacher_feats):
        raise InputError(
            f"loss inputs 'student_feats'/'teacher_feats': expected equally long non-empty lists of levels, "
            f"found {len(student_feats)} and {len(teacher_feats)}"
        )
    for level, (fs, ft) in enumerate(zip(student_feats, teacher_feats)):
        require_dims(f"student_feats[{level}]", fs, 4, "(B, C, H, W)")
        require_same_shape(f"student_feats[{level}]", fs, f"teacher_feats[{level}]", ft)


def feature_mse(
    student_feats: Sequence[torch.Tensor],
    teacher_feats: Sequence[torch.Tensor],
    weight: float = 5.0,
    reduction: FeatureReduction = "level_mean",
) -> torch.Tensor:
    """Feature distillation by uniform regression of the teacher's neck features (FitNets-style "hint" loss).

    ``level_mean`` (default): weight · (1/L) Σ_levels mean_{b,c,y,x} (f_s − f_t)², so each pyramid level counts
    equally. ``pooled``: weight · Σ_all (f_s − f_t)² / (number of elements of all levels), the reference's mean over
    its concatenated features, dominated by the finest level.
    """
    _check_feature_lists(student_feats, teacher_feats)
    sq = [(fp32(fs) - fp32(ft.detach())).pow(2) for fs, ft in zip(student_feats, teacher_feats)]
    if reduction == "level_mean":
        return weight * torch.stack([s.mean() for s in sq]).mean()
    if reduction == "pooled":
        return weight * torch.stack([s.sum() for s in sq]).sum() / sum(s.numel() for s in sq)
    raise ConfigError(f"loss parameter 'reduction': expected 'level_mean' or 'pooled', found {reduction!r}")


def pdf_location_weights(
    s_cls: torch.Tensor,
    t_cls: torch.Tensor,
    level_shapes: Sequence[tuple[int, int]],
    anchors_per_loc: int = 6,
) -> list[torch.Tensor]:
    """PDF-Distil's per-location weights (Zhang et al., BMVC 2021), one (B, 1, H, W) tensor per level, no grad.

    D = (σ(z_t) − σ(z_s))² per anchor and class; d = sqrt(Σ_c D) per anchor; m = mean of d over the anchors of a
    location; w = m / Σ m with the sum over the whole batch and all levels (the reference's normalisation), so
    Σ w = 1 and images where teacher and student disagree more get more weight. Zero disagreement → all 0.
    """
    require_dims("s_cls", s_cls, 3, "(B, A, num_classes)")
    require_same_shape("s_cls", s_cls, "t_cls", t_cls)
    require_level_layout(level_shapes, anchors_per_loc, s_cls.shape[1], "s_cls")
    with torch.no_grad():
        disagree = (fp32(t_cls).sigmoid() - fp32(s_cls).sigmoid()).pow(2).sum(dim=-1).sqrt()  # (B, A)
        sizes = [int(h) * int(w) * anchors_per_loc for h, w in level_shapes]
        per_level = [
            chunk.reshape(chunk.shape[0], int(h), int(w), anchors_per_loc).mean(dim=-1).unsqueeze(1)
            for chunk, (h, w) in zip(disagree.split(sizes, dim=1), level_shapes)
        ]
        total = torch.stack([m.sum() for m in per_level]).sum().clamp(min=torch.finfo(torch.float32).tiny)
        return [m / total for m in per_level]


def pdf_distil(
    student_feats: Sequence[torch.Tensor],
    teacher_feats: Sequence[torch.Tensor],
    s_cls: torch.Tensor,
    t_cls: torch.Tensor,
    s_box: torch.Tensor,
    t_box: torch.Tensor,
    level_shapes: Sequence[tuple[int, int]],
    anchors_per_loc: int = 6,
    weight: float = 5.0,
    cls_weight: float = 1.0,
    box_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """PDF-Distil as the reference computes it, with the missing guards (REFERENCE §2).

    ``pdf_feat`` = weight · Σ_levels Σ_{b,y,x} w · mean_c (f_s − f_t)², which equals the reference's
    Σ w' (f_s − f_t)² with w broadcast over the C channels and renormalised to sum 1 (w' = w / C);
    ``pdf_cls`` = cls_weight · Σ D · BCE(z_s, σ(z_t)) / max(#{σ(z_t) > 0.5}, 1) over anchor×class elements;
    ``pdf_box`` = box_weight · mean |δ_s − δ_t| (L1). The weights w and D carry no gradient; the teacher is detached.
    """
    _check_feature_lists(student_feats, teacher_feats)
    if [tuple(f.shape[-2:]) for f in student_feats] != [(int(h), int(w)) for h, w in level_shapes]:
        raise InputError(
            f"loss input 'level_shapes': expected the feature maps' (H, W) "
            f"{[tuple(f.shape[-2:]) for f in student_feats]}, found {list(level_shapes)}"
        )
    require_dims("s_box", s_box, 3, "(B, A, 4)")
    require_same_shape("s_box", s_box, "t_box", t_box)
    weights = pdf_location_weights(s_cls, t_cls, level_shapes, anchors_per_loc)
    feat = torch.stack(
        [
            (w * (fp32(fs) - fp32(ft.detach())).pow(2).mean(dim=1, keepdim=True)).sum()
            for w, fs, ft in zip(weights, student_feats, teacher_feats)
        ]
    ).sum()
    target = fp32(t_cls.detach()).sigmoid()
    with torch.no_grad():
        disagree = (target - fp32(s_cls).sigmoid()).pow(2)
    bce = F.binary_cross_entropy_with_logits(fp32(s_cls), target.to(fp32(s_cls).dtype), reduction="none")
    cls = (disagree * bce).sum() / (target > 0.5).sum().clamp(min=1)
    box = F.l1_loss(fp32(s_box), fp32(t_box.detach()))
    return {"pdf_feat": weight * feat, "pdf_cls": cls_weight * cls, "pdf_box": box_weight * box}
