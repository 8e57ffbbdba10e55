"""Balanced L1 loss for box regression (Pang et al., "Libra R-CNN: Towards Balanced Learning", CVPR 2019).

It raises the gradient of inliers relative to Smooth L1 so that accurate boxes are not drowned out by outliers.
The paper defines it on |x| < 1 with gradient α·ln(b|x| + 1) inside and γ outside, b fixed by α·ln(b + 1) = γ so
the gradient is continuous. For a threshold β ≠ 1 (RetinaNet-style β = 0.11, REFERENCE §2) we use the scaled
form L_β(x) = β·L(x/β), which keeps the paper's gradient shape (0 at x = 0, γ beyond β, continuous value and
gradient at β). mmdetection's widely copied formula (``form="mmdet"``) only rescales inside the log: for β ≠ 1 its
gradient is α(1/β − 1) at 0 and jumps at β (mmdetection issue #2483, Libra_R-CNN issue #12); it is kept selectable
because the reference implementation most likely used it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch

from engine.core.errors import ConfigError
from engine.core.settings import LossSettings
from engine.losses._checks import fp32, require_dims, require_positive, require_same_shape

_LOSS = LossSettings()

BalancedL1Form = Literal["paper", "mmdet"]


def balanced_l1(
    pred: torch.Tensor,
    target: torch.Tensor,
    alpha: float = _LOSS.bl1_alpha,
    gamma: float = _LOSS.bl1_gamma,
    beta: float = _LOSS.bl1_beta,
    form: BalancedL1Form = "paper",
) -> torch.Tensor:
    """Element-wise Balanced L1 of ``pred - target`` in float32 (defaults: α=0.5, γ=1.5, β=0.11 of REFERENCE §2)."""
    require_same_shape("pred", pred, "target", target)
    return balanced_l1_of_abs((fp32(pred) - fp32(target)).abs(), alpha, gamma, beta, form)


def balanced_l1_of_abs(
    diff: torch.Tensor, alpha: float, gamma: float, beta: float, form: BalancedL1Form = "paper"
) -> torch.Tensor:
    """Balanced L1 of an absolute difference ``diff`` ≥ 0; exactly 0 at ``diff`` = 0 in both forms."""
    require_positive("alpha", alpha)
    require_positive("gamma", gamma)
    require_positive("beta", beta)
    b = math.exp(gamma / alpha) - 1.0  # α·ln(b + 1) = γ
    if form == "paper":
        inlier = alpha / b * (b * diff + beta) * torch.log1p(b * diff / beta) - alpha * diff
        outlier = gamma * diff + beta * (gamma / b - alpha)
    elif form == "mmdet":
        inlier = alpha / b * (b * diff + 1.0) * torch.log1p(b * diff / beta) - alpha * diff
        outlier = gamma * diff + (gamma / b - alpha * beta)
    else:
        raise ConfigError(f"loss parameter 'form': expected 'paper' or 'mmdet', found {form!r}")
    return torch.where(diff < beta, inlier, outlier)


def detection_box_loss(
    box_deltas: torch.Tensor,
    target_deltas: torch.Tensor,
    labels: torch.Tensor,
    box_loss: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Supervised box regression: Balanced L1 averaged over the positive anchors' 4 deltas (labels ≥ 0).

    ``box_deltas``/``target_deltas`` (B, A, 4), ``labels`` (B, A); ``box_loss``: Balanced L1 parameters (``alpha``,
    ``gamma``, ``beta``, ``form`` of :func:`balanced_l1`; its defaults where not given). The reduction is the mean
    over the positive anchors and their 4 coordinates (sum / (4·num_pos)), as the reference's ``loss.mean()`` over
    (num_pos, 4). Non-positive anchors are masked before the loss (their targets may be garbage, even inf), so they
    give neither value nor gradient; with no positives the loss is 0 (with a zero, finite gradient).
    """
    require_dims("box_deltas", box_deltas, 3, "(B, A, 4)")
    require_same_shape("box_deltas", box_deltas, "target_deltas", target_deltas)
    require_dims("labels", labels, 2, "(B, A)")
    require_same_shape("labels", labels, "box_deltas[..., 0]", box_deltas[..., 0])
    positive = (labels >= 0).unsqueeze(-1)
    diff = torch.where(positive, fp32(box_deltas) - fp32(target_deltas), torch.zeros((), device=labels.device))
    loss = balanced_l1_of_abs(diff.abs(), **{**_LOSS.box_loss, **(box_loss or {})})
    return loss.sum() / (positive.sum() * box_deltas.shape[-1]).clamp(min=1)
