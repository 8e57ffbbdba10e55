"""Detection head (anchor-based, sigmoid classes) and Panoptic-FPN-style segmentation head (REFERENCE §2)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.models.layers import conv_norm_act

PRIOR_PROBABILITY: float = 0.01


class _Tower(nn.Module):
    """``depth`` × (3×3 conv + BN + LeakyReLU) then a 1×1 predictor, applied per pyramid level.

    Shared: conv and predictor weights are common to all levels, BatchNorm is per level (levels have different
    statistics; one shared BN would train on a mixture and evaluate on a mismatch). Not shared: one tower per level.
    """

    def __init__(self, channels: int, out_channels: int, depth: int, num_levels: int, shared: bool) -> None:
        super().__init__()
        self.shared = shared
        n_weights = 1 if shared else num_levels
        self.convs = nn.ModuleList(
            nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1, bias=False) for _ in range(depth))
            for _ in range(n_weights)
        )
        self.norms = nn.ModuleList(
            nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(depth)) for _ in range(num_levels)
        )
        self.act = nn.LeakyReLU(0.1)
        self.predictors = nn.ModuleList(nn.Conv2d(channels, out_channels, 1) for _ in range(n_weights))
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.normal_(conv.weight, std=0.01)
                if conv.bias is not None:
                    nn.init.zeros_(conv.bias)

    def init_predictor_bias(self, value: float) -> None:
        for pred in self.predictors:
            nn.init.constant_(pred.bias, value)

    def forward(self, x: Tensor, level: int) -> Tensor:
        w = 0 if self.shared else level
        for conv, norm in zip(self.convs[w], self.norms[level]):
            x = self.act(norm(conv(x)))
        return self.predictors[w](x)


def _flatten(x: Tensor, per_anchor: int) -> Tensor:
    """(B, A·n, H, W) → (B, H·W·A, n): rows y-major, then x, then anchor (the AnchorGenerator order)."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, per_anchor)


class DetectionHead(nn.Module):
    """Classification and box towers over P3..P6; outputs concatenated over levels in anchor order."""

    def __init__(
        self, channels: int, num_classes: int, num_anchors: int = 6, num_levels: int = 4, shared: bool = True
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls_tower = _Tower(channels, num_anchors * num_classes, 2, num_levels, shared)
        self.box_tower = _Tower(channels, num_anchors * 4, 2, num_levels, shared)
        # focal-loss prior: every anchor starts at p = 0.01 foreground so early losses are not swamped by background
        self.cls_tower.init_predictor_bias(-math.log((1.0 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Returns cls_logits (B, A_total, num_classes) and box_deltas (B, A_total, 4)."""
        cls = [_flatten(self.cls_tower(f, k), self.num_classes) for k, f in enumerate(features)]
        box = [_flatten(self.box_tower(f, k), 4) for k, f in enumerate(features)]
        return torch.cat(cls, dim=1), torch.cat(box, dim=1)


class SegmentationHead(nn.Module):
    """Panoptic FPN semantic branch: level k gets k+1 × (3×3 conv 128 + BN + ReLU + 2× up) to stride 4; the sum
    goes through 3 × (3×3 conv) and a 1×1 classifier; logits are resized to exactly the input size.

    Every upsampling targets the next finer map's actual size (and P3's 2×), so odd inputs line up.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        num_levels: int = 4,
        mid_channels: int = 128,
        full_res_refine: bool = False,
    ) -> None:
        super().__init__()
        self.full_res_refine = full_res_refine
        self.branches = nn.ModuleList(
            nn.ModuleList(conv_norm_act(channels if j == 0 else mid_channels, mid_channels) for j in range(k + 1))
            for k in range(num_levels)
        )
        self.refine = nn.Sequential(*(conv_norm_act(mid_channels, mid_channels) for _ in range(3)))
        self.classifier = nn.Conv2d(mid_channels, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: list[Tensor], image_hw: tuple[int, int] | torch.Size) -> Tensor:
        total: Tensor | None = None
        for k, stages in enumerate(self.branches):
            x = features[k]
            for j, conv in enumerate(stages):
                finer = k - j - 1
                x = conv(x)
                if finer >= 0:
                    x = F.interpolate(x, size=features[finer].shape[-2:], mode="bilinear", align_corners=False)
                else:
                    x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            total = x if total is None else total + x
        assert total is not None
        if self.full_res_refine:
            total = F.interpolate(total, size=image_hw, mode="bilinear", align_corners=False)
            return self.classifier(self.refine(total))
        logits = self.classifier(self.refine(total))
        return F.interpolate(logits, size=image_hw, mode="bilinear", align_corners=False)
