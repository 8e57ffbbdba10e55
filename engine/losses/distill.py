"""Knowledge-distillation losses: a frozen teacher supervises the task a batch has no labels for (paper §2).

Every function detaches the teacher's tensors itself, so a caller cannot leak gradients into the teacher, and
computes in float32 whatever autocast produced. Feature inputs are lists of per-level (B, C, H, W) tensors (the
student's after its adaptation layer); detection inputs are (B, A, K) logits and (B, A, 4) deltas flattened
level-major, then y, x, then the anchors of a location (docs/ARCHITECTURE.md, "Model interface").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from engine.core.errors import ConfigError, InputError
from engine.core.settings import SOFT_DET_FORMS, KDSettings, LossSettings
from engine.losses._checks import (
    fp32,
    require_dims,
    require_level_layout,
    require_non_negative,
    require_positive,
    require_same_shape,
    require_unit_interval,
)
from engine.losses.balanced_l1 import balanced_l1
from engine.losses.focal import focal_elementwise

FeatureReduction = Literal["level_mean", "pooled"]
SoftDetForm = Literal["focal", "quality_focal"]
_KD, _LOSS = KDSettings(), LossSettings()
"""Default arguments come from the settings dataclasses (the one place defaults live)."""


def quality_focal_elementwise(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = _LOSS.focal_alpha, gamma: float = _KD.soft_focal_gamma
) -> torch.Tensor:
    """Per-element α_t·|t − σ(z)|^γ·BCE(z, t) in float32 for soft targets t (Li et al.'s quality focal loss, GFL).

    Both factors vanish at σ(z) = t and BCE is minimised there, so the loss is minimised exactly at the target
    probability for every γ. α_t = α·t + (1 − α)·(1 − t) does not depend on z, so it scales the loss without moving
    its optimum (it keeps the magnitude comparable with the focal form).
    """
    require_unit_interval("alpha", alpha)
    require_non_negative("gamma", gamma)
    logits = fp32(logits)
    targets = targets.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    modulation = (targets - logits.sigmoid()).abs().pow(gamma)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * modulation * bce


def soft_detection_kd(
    s_cls: torch.Tensor,
    s_box: torch.Tensor,
    t_cls: torch.Tensor,
    t_box: torch.Tensor,
    cls_weight: float = _KD.soft_det_cls_weight,
    box_weight: float = _KD.soft_det_box_weight,
    alpha: float = _LOSS.focal_alpha,
    gamma: float = _KD.soft_focal_gamma,
    box_loss: Mapping[str, float] | None = None,
    form: SoftDetForm = "focal",
) -> dict[str, torch.Tensor]:
    """Soft detection loss: teacher and student share the anchor layout, so predictions pair anchor by anchor.

    ``soft_cls`` = cls_weight · mean over all anchor×class elements of a per-element loss of the student logit
    against the soft target σ(teacher logit):

    - ``form="focal"`` (the reference): α_t·(1 − p_t)^γ·BCE with p_t = p·t + (1 − p)·(1 − t). For γ > 0 this is
      NOT minimised at the teacher's probability: (1 − p_t) grows with p when t < 0.5, so the student is pulled
      below the teacher (t = 0.3, γ = 1 → optimum p ≈ 0.19) and, for t > 0.5, above it. It sharpens the teacher's
      soft scores towards 0/1 rather than copying them; only γ = 0 (weighted BCE) copies them.
    - ``form="quality_focal"``: α_t·|t − p|^γ·BCE (:func:`quality_focal_elementwise`), minimised at p = t.

    ``soft_box`` = box_weight · mean over all anchors×4 of Balanced L1(student delta − teacher delta), with
    ``box_loss`` = {alpha, gamma, beta} of the supervised Balanced L1 (its defaults when None).
    No matching and no NMS (REFERENCE §2). The cls term is not 0 for identical predictions (a soft-target BCE
    bottoms out at the teacher's entropy).
    """
    if form not in SOFT_DET_FORMS:
        raise ConfigError(f"loss parameter 'form': expected one of {list(SOFT_DET_FORMS)}, found {form!r}")
    require_dims("s_cls", s_cls, 3, "(B, A, num_classes)")
    require_same_shape("s_cls", s_cls, "t_cls", t_cls)
    require_dims("s_box", s_box, 3, "(B, A, 4)")
    require_same_shape("s_box", s_box, "t_box", t_box)
    target = fp32(t_cls.detach()).sigmoid()
    elementwise = focal_elementwise if form == "focal" else quality_focal_elementwise
    cls = elementwise(s_cls, target, alpha, gamma).mean()
    box = balanced_l1(s_box, t_box.detach(), **(box_loss or {})).mean()
    return {"soft_cls": cls_weight * cls, "soft_box": box_weight * box}


def soft_segmentation_kd(
    s_logits: torch.Tensor,
    t_logits: torch.Tensor,
    temperature: float = _KD.temperature,
    ignore_mask: torch.Tensor | None = None,
    weight: float = _KD.soft_seg_weight,
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
    weight: float = _KD.feature_weight,
    reduction: FeatureReduction = _KD.feature_reduction,  # type: ignore[assignment]
) -> torch.Tensor:
    """Feature distillation by uniform regression of the teacher's neck features (FitNets-style "hint" loss).

    ``level_mean``: weight · (1/L) Σ_levels mean_{b,c,y,x} (f_s − f_t)², so each pyramid level counts
    equally. ``pooled`` (default): weight · Σ_all (f_s − f_t)² / (number of elements of all levels), the
    reference's mean over its concatenated features, dominated by the finest level.
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
    weight: float = _KD.feature_weight,
    cls_weight: float = _KD.pdf_cls_weight,
    box_weight: float = _KD.pdf_box_weight,
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
