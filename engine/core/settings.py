"""Typed loss and distillation settings: the ONE place their defaults live (torch-free: QGIS validates configs).

The training config's ``loss`` and ``kd`` sections are derived from these dataclasses (engine.train.config builds
its defaults with :func:`defaults`), and :func:`configure_losses` turns a validated config into them once, so the
objectives receive checked, typed values instead of looking keys up in a nested dict (cf. torchgeo's
``configure_losses``). Values not from the paper or REFERENCE §2 say so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from engine.core.errors import ConfigError

RUN_NORMALIZATIONS = ("pooled", "imagenet")
"""``data.normalization``: pooled statistics of all the run's training chip datasets (default), or ImageNet's."""
KD_FEATURES = ("none", "mse", "pdf")
FEATURE_REDUCTIONS = ("pooled", "level_mean")
SOFT_DET_FORMS = ("focal", "quality_focal")


def _require(section: str, name: str, ok: bool, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"config key '{section}.{name}': expected {expected}, found {value!r}")


def _non_negative(obj: Any, section: str) -> None:
    """Every float field of a settings dataclass must be >= 0."""
    for item in fields(obj):
        value = getattr(obj, item.name)
        if isinstance(value, float):
            _require(section, item.name, value >= 0, "a value >= 0", value)


@dataclass(frozen=True)
class LossSettings:
    """Supervised losses: RetinaNet's focal loss (α 0.25, γ 2) and Balanced L1 (α 0.5, γ 1.5, β 0.11)."""

    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    bl1_alpha: float = 0.5
    bl1_gamma: float = 1.5
    bl1_beta: float = 0.11
    det_weight: float = 1.0
    seg_weight: float = 1.0
    seg_dice_weight: float = 0.0
    """Soft Dice added to the cross-entropy (ours, not the paper's: 0 = off). Small classes (cars) are learned in
    far fewer steps with it; the demo preset uses 1."""
    seg_class_balance: float = 0.0
    """Exponent p of inverse-frequency class weights in the segmentation cross-entropy (ours, not the paper's: 0 =
    off): w_c ∝ share_c^-p, shares counted on the training split's labels, scaled so the average pixel weighs 1 and
    capped at 10× the lightest class. 0.5 (inverse square root) lets a class of 1-2 % of the pixels (clutter) win
    some argmaxes within a few hundred steps."""

    def __post_init__(self) -> None:
        _non_negative(self, "loss")
        _require("loss", "focal_alpha", 0.0 <= self.focal_alpha <= 1.0, "a value in [0, 1]", self.focal_alpha)
        _require("loss", "bl1_beta", self.bl1_beta > 0, "a value > 0", self.bl1_beta)

    @property
    def box_loss(self) -> dict[str, float]:
        """Balanced L1 parameters as the loss functions take them."""
        return {"alpha": self.bl1_alpha, "gamma": self.bl1_gamma, "beta": self.bl1_beta}


@dataclass(frozen=True)
class UnlabelledWeights:
    """Multipliers of the distillation terms computed on the unlabelled stream (``data.unlabelled``), on top of the
    ``kd`` weights: ``det_weight`` scales every detection KD term (soft, MSE/PDF towards the detection teacher),
    ``seg_weight`` every segmentation KD term. Ours (no paper value): 1 treats the user's imagery like the other
    domain's."""

    det_weight: float = 1.0
    seg_weight: float = 1.0

    def __post_init__(self) -> None:
        _non_negative(self, "kd.unlabelled")


@dataclass(frozen=True)
class KDSettings:
    """Distillation (REFERENCE §2 unless noted).

    ``soft_det_cls_weight`` 5e3 multiplies a mean over all anchor×class elements (tiny per element), as in the
    reference; ``soft_focal_gamma`` 1 is the reference's γ. ``soft_det_form``: ``focal`` (the reference: focal loss
    against σ(teacher), whose optimum lies below the teacher's probability when γ > 0) or ``quality_focal``
    (modulated by |σ(t) − σ(s)|^γ, minimised exactly at the teacher's probability; ours). ``soft_seg_weight`` and
    ``temperature`` have no working reference value (its segmentation KD was broken): 1 makes the KL comparable to
    the supervised CE.
    """

    soft: bool = False
    feature: str = "none"
    soft_det_form: str = "focal"
    soft_det_cls_weight: float = 5000.0
    soft_det_box_weight: float = 1.0
    soft_seg_weight: float = 1.0
    soft_focal_gamma: float = 1.0
    temperature: float = 1.0
    feature_weight: float = 5.0
    feature_reduction: str = "pooled"
    pdf_cls_weight: float = 1.0
    pdf_box_weight: float = 1.0
    unlabelled: UnlabelledWeights = field(default_factory=UnlabelledWeights)

    def __post_init__(self) -> None:
        _non_negative(self, "kd")
        _require("kd", "feature", self.feature in KD_FEATURES, f"one of {list(KD_FEATURES)}", self.feature)
        _require(
            "kd",
            "feature_reduction",
            self.feature_reduction in FEATURE_REDUCTIONS,
            "|".join(FEATURE_REDUCTIONS),
            self.feature_reduction,
        )
        _require(
            "kd", "soft_det_form", self.soft_det_form in SOFT_DET_FORMS, "|".join(SOFT_DET_FORMS), self.soft_det_form
        )
        _require("kd", "temperature", self.temperature > 0, "a value > 0", self.temperature)

    @property
    def enabled(self) -> bool:
        """Any distillation at all (then both teachers are loaded)."""
        return self.soft or self.feature != "none"


@dataclass(frozen=True)
class Objectives:
    """Everything the training objectives need to know about losses, built once from the config."""

    loss: LossSettings
    kd: KDSettings
    seg_class_weights: tuple[float, ...] | None = None
    """Per-class cross-entropy weights from ``loss.seg_class_balance`` and the training labels (None = unweighted);
    data, not config, so the run's setup fills it in."""


def defaults(cls: type) -> dict[str, Any]:
    """A settings dataclass's defaults as a config section (nested dataclasses become nested mappings)."""
    return dataclasses.asdict(cls())


def _from_section(cls: type, section: Mapping[str, Any]) -> Any:
    names = {item.name for item in fields(cls)}
    return cls(**{k: v for k, v in section.items() if k in names})


def configure_losses(cfg: Mapping[str, Any]) -> Objectives:
    """Typed, validated loss/KD settings from a training config's ``loss`` and ``kd`` sections."""
    kd = dict(cfg["kd"])
    kd["unlabelled"] = _from_section(UnlabelledWeights, kd.get("unlabelled") or {})
    return Objectives(loss=_from_section(LossSettings, cfg["loss"]), kd=_from_section(KDSettings, kd))
