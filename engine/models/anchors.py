"""Anchors (REFERENCE §2), the SSD box coder and the batched anchor-to-ground-truth assignment.

Anchor order everywhere (generator, head outputs, assignment): level-major, then row y, then column x, then the
``len(scales) * len(aspect_ratios)`` shapes of a location (scale-major: (s,s), (s√2,s/√2), (s/√2,s√2), then the
same at s·√2). Anchors are xyxy in input pixels, centred on (x + 0.5, y + 0.5)·stride, and not clipped.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.ops import box_iou

DEFAULT_VARIANCES: tuple[float, float] = (0.1, 0.2)
_MAX_LOG_SCALE = math.log(1000.0 / 16.0)  # caps exp() in decode so a wild delta cannot overflow


class AnchorGenerator:
    """Anchors for the 4 pyramid levels from feature-map (or image) sizes, with torch ops only (ONNX-traceable)."""

    def __init__(
        self,
        base_size: float = 24.0,
        scales: tuple[float, ...] = (1.0, math.sqrt(2.0)),
        aspect_ratios: tuple[float, ...] = (1.0, 2.0, 0.5),
        strides: tuple[int, ...] = (8, 16, 32, 64),
    ) -> None:
        self.base_size = float(base_size)
        self.scales = tuple(float(s) for s in scales)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.strides = tuple(int(s) for s in strides)

    @property
    def num_anchors(self) -> int:
        """Anchors per location."""
        return len(self.scales) * len(self.aspect_ratios)

    def cell_anchors(
        self, level: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """(num_anchors, 4) xyxy shapes centred on 0 for ``level`` (base size ``base_size * 2**level``)."""
        size = self.base_size * 2.0**level
        rows = []
        for scale in self.scales:
            for ratio in self.aspect_ratios:  # ratio = w / h at constant area
                w = size * scale * math.sqrt(ratio)
                h = size * scale / math.sqrt(ratio)
                rows.append([-w / 2, -h / 2, w / 2, h / 2])
        return torch.tensor(rows, dtype=dtype, device=device)

    def grid_sizes(self, image_hw: tuple[int, int]) -> list[tuple[int, int]]:
        """Feature-map sizes the ResNet+neck produce for an image: ceil(size / stride) (every stride-2 conv and the
        max-pool use padding k//2, so each halving rounds up)."""
        h, w = int(image_hw[0]), int(image_hw[1])
        return [(-(-h // s), -(-w // s)) for s in self.strides]

    def level_anchors(
        self, level: int, height: int | Tensor, width: int | Tensor, device: torch.device | None = None
    ) -> Tensor:
        """(height * width * num_anchors, 4) anchors of one level, rows y-major then x then shape."""
        stride = float(self.strides[level])
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * stride
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
        return (centres + self.cell_anchors(level, device=device)[None]).reshape(-1, 4)

    def for_sizes(self, sizes: list[tuple[int, int]], device: torch.device | None = None) -> Tensor:
        """(A_total, 4) anchors for the given per-level feature-map sizes."""
        return torch.cat([self.level_anchors(k, h, w, device) for k, (h, w) in enumerate(sizes)], dim=0)

    def for_features(self, features: list[Tensor]) -> Tensor:
        """(A_total, 4) anchors matching neck outputs; reads sizes from the tensors (dynamic H, W when traced)."""
        return torch.cat(
            [self.level_anchors(k, f.shape[-2], f.shape[-1], f.device) for k, f in enumerate(features)], dim=0
        )

    def for_image(self, image_hw: tuple[int, int], device: torch.device | None = None) -> Tensor:
        """(A_total, 4) anchors for an input image of size (H, W)."""
        return self.for_sizes(self.grid_sizes(image_hw), device)


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode(boxes: Tensor, anchors: Tensor, variances: tuple[float, float] = DEFAULT_VARIANCES) -> Tensor:
    """SSD regression targets (dx, dy, dw, dh) of xyxy ``boxes`` w.r.t. ``anchors`` (shapes broadcast, e.g.
    (B, A, 4) and (A, 4)). Box sizes are floored at 1e-3 px so padding boxes give finite (ignored) targets."""
    boxes, anchors = boxes.float(), anchors.float()
    gx, gy, gw, gh = _centre_size(boxes)
    ax, ay, aw, ah = _centre_size(anchors)
    v_c, v_s = variances
    return torch.stack(
        [
            (gx - ax) / (aw * v_c),
            (gy - ay) / (ah * v_c),
            torch.log(gw.clamp(min=1e-3) / aw) / v_s,
            torch.log(gh.clamp(min=1e-3) / ah) / v_s,
        ],
        dim=-1,
    )


def decode(deltas: Tensor, anchors: Tensor, variances: tuple[float, float] = DEFAULT_VARIANCES) -> Tensor:
    """Inverse of :func:`encode`: xyxy boxes (float32) from (…, 4) deltas and broadcastable anchors."""
    deltas, anchors = deltas.float(), anchors.float()
    ax, ay, aw, ah = _centre_size(anchors)
    v_c, v_s = variances
    cx = ax + deltas[..., 0] * v_c * aw
    cy = ay + deltas[..., 1] * v_c * ah
    w = aw * torch.exp((deltas[..., 2] * v_s).clamp(max=_MAX_LOG_SCALE))
    h = ah * torch.exp((deltas[..., 3] * v_s).clamp(max=_MAX_LOG_SCALE))
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


class Assignment(NamedTuple):
    """labels (B, A) long: class >= 0 positive, -1 negative (background), -2 ignored; matched_boxes (B, A, 4)."""

    labels: Tensor
    matched_boxes: Tensor


NEGATIVE: int = -1
"""Assignment label of background anchors (all classes target 0). The one definition of the sentinels."""
IGNORE: int = -2
"""Assignment label of anchors between the negative and positive IoU thresholds (no classification loss)."""


def assign(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    pos_iou: float = 0.5,
    neg_iou: float = 0.4,
) -> Assignment:
    """Match anchors (A, 4) to padded ground truth (B, K, 4) / (B, K) (label -1 = padding), batched on the device.

    IoU >= pos_iou → positive (label of the best GT), < neg_iou → negative, between → ignored; then each real GT's
    best anchor (if it overlaps at all) is forced positive for that GT (ties between GTs: the higher GT index wins).
    ``matched_boxes`` holds the matched GT box of every anchor (meaningful for positives only).
    """
    batch, k = gt_labels.shape
    device = anchors.device
    if k == 0:  # no GT slots at all: one padding slot keeps the reductions below well defined
        gt_boxes = torch.zeros(batch, 1, 4, dtype=torch.float32, device=device)
        gt_labels = torch.full((batch, 1), -1, dtype=torch.long, device=device)
        k = 1
    gt_boxes = gt_boxes.to(device=device, dtype=torch.float32)
    gt_labels = gt_labels.to(device=device, dtype=torch.long)
    valid = gt_labels >= 0  # (B, K)
    iou = box_iou(gt_boxes.reshape(-1, 4), anchors.float()).reshape(batch, k, -1)  # (B, K, A)
    iou = iou.masked_fill(~valid[..., None], -1.0)

    best_iou, best_gt = iou.max(dim=1)  # (B, A) per anchor
    labels = torch.gather(gt_labels, 1, best_gt)
    labels = torch.where(best_iou >= pos_iou, labels, torch.full_like(labels, IGNORE))
    labels = torch.where(best_iou < neg_iou, torch.full_like(labels, NEGATIVE), labels)

    # force each real GT's best anchor: scatter its GT index into a spare column A for padding / non-overlapping GTs
    num_anchors = anchors.shape[0]
    gt_best_iou, gt_best_anchor = iou.max(dim=2)  # (B, K)
    target = torch.where(valid & (gt_best_iou > 0), gt_best_anchor, torch.full_like(gt_best_anchor, num_anchors))
    gt_index = torch.arange(k, device=device).expand(batch, k)
    forced = torch.full((batch, num_anchors + 1), -1, dtype=torch.long, device=device)
    forced = forced.scatter_reduce(1, target, gt_index, reduce="amax")[:, :num_anchors]
    is_forced = forced >= 0
    best_gt = torch.where(is_forced, forced, best_gt)
    labels = torch.where(is_forced, torch.gather(gt_labels, 1, best_gt), labels)

    matched = torch.gather(gt_boxes, 1, best_gt[..., None].expand(batch, num_anchors, 4))
    return Assignment(labels, matched)
