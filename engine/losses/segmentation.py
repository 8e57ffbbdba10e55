"""Supervised segmentation loss: softmax cross-entropy with ignored pixels (eroded boundaries, padding)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from engine.core.classes import IGNORE_INDEX
from engine.core.errors import InputError
from engine.losses._checks import fp32, require_dims

CLASS_WEIGHT_CAP = 10.0
"""Largest ratio between two class-balance weights: a class seen on a handful of pixels must not dominate."""


def class_balance_weights(pixel_counts: Sequence[int], power: float, cap: float = CLASS_WEIGHT_CAP) -> list[float]:
    """Inverse-frequency weights w_c ∝ share_c^-power, capped at ``cap`` × the smallest, scaled so that the
    pixel-weighted mean is 1 (the loss keeps its scale). A class absent from the counts gets the largest weight."""
    total = float(sum(pixel_counts))
    if total <= 0:
        raise InputError("class balance: expected labelled pixels to count, found none")
    shares = [count / total for count in pixel_counts]
    present = [share for share in shares if share > 0]
    raw = [share**-power if share > 0 else min(present) ** -power for share in shares]
    floor = min(raw)
    capped = [min(weight, cap * floor) for weight in raw]
    mean = sum(share * weight for share, weight in zip(shares, capped))
    return [weight / mean for weight in capped]


def segmentation_ce_loss(
    seg_logits: torch.Tensor,
    mask: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy over the labelled pixels of the batch, in float32.

    ``seg_logits`` (B, C, H, W), ``mask`` (B, H, W) long with ``ignore_index`` (255) for unlabelled pixels. Unlike
    ``F.cross_entropy(reduction="mean")``, an all-ignored batch gives 0 (not NaN), so a chip of pure boundary or
    padding cannot poison a training step. ``class_weights`` (C,) scale each pixel's term by its label's weight; the
    sum is still divided by the pixel count (not the weight sum), so weights with a pixel mean of 1
    (:func:`class_balance_weights`) keep the loss's scale from batch to batch.
    """
    require_dims("seg_logits", seg_logits, 4, "(B, C, H, W)")
    require_dims("mask", mask, 3, "(B, H, W)")
    if seg_logits.shape[0] != mask.shape[0] or seg_logits.shape[2:] != mask.shape[1:]:
        raise InputError(
            f"loss inputs 'seg_logits'/'mask': expected (B, C, H, W) and (B, H, W) with equal B, H, W, "
            f"found {tuple(seg_logits.shape)} and {tuple(mask.shape)}"
        )
    weight = None if class_weights is None else class_weights.to(seg_logits.device, torch.float32)
    total = F.cross_entropy(fp32(seg_logits), mask.long(), weight=weight, ignore_index=ignore_index, reduction="sum")
    return total / (mask != ignore_index).sum().clamp(min=1)


def soft_dice_loss(
    seg_logits: torch.Tensor, mask: torch.Tensor, ignore_index: int = IGNORE_INDEX, eps: float = 1.0
) -> torch.Tensor:
    """1 − mean soft Dice over the classes present in the batch's labels, labelled pixels only, in float32.

    Cross-entropy is a sum over pixels, so a class of 1-2 % of the pixels (cars) hardly moves it early in training;
    Dice scores each class's overlap on its own, so small classes weigh as much as large ones. ``eps`` smooths the
    ratio (Dice of an empty prediction for a present class stays < 1 only by it).
    """
    require_dims("seg_logits", seg_logits, 4, "(B, C, H, W)")
    require_dims("mask", mask, 3, "(B, H, W)")
    probs = torch.softmax(fp32(seg_logits), dim=1)
    valid = (mask != ignore_index).unsqueeze(1)
    target = F.one_hot(torch.where(valid.squeeze(1), mask.long(), 0), probs.shape[1]).permute(0, 3, 1, 2)
    target = target.to(probs.dtype) * valid
    probs = probs * valid
    inter = (probs * target).sum(dim=(0, 2, 3))
    denom = probs.sum(dim=(0, 2, 3)) + target.sum(dim=(0, 2, 3))
    present = target.sum(dim=(0, 2, 3)) > 0
    if not bool(present.any()):
        return seg_logits.sum() * 0.0
    dice = (2.0 * inter + eps) / (denom + eps)
    return 1.0 - dice[present].mean()
