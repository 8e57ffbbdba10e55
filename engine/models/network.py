"""MultiTaskNet: shared encoder (ResNet + FPN/PAFPN) with optional detection and segmentation heads."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from engine.models.anchors import AnchorGenerator
from engine.models.backbone import ResNetTrunk
from engine.models.config import NUM_LEVELS, ModelConfig, load_model_config
from engine.models.heads import DetectionHead, SegmentationHead
from engine.models.necks import build_neck


class MultiTaskNet(nn.Module):
    """``forward(images)`` → {"features", "cls_logits", "box_deltas", "seg_logits"} (heads absent from
    ``cfg.tasks`` are absent). Static control flow only: exportable with dynamic H, W."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = ResNetTrunk(cfg.backbone, cfg.in_channels, cfg.pretrained)
        self.neck = build_neck(cfg.neck, self.backbone.out_channels, cfg.channels)
        self.anchor_generator = AnchorGenerator(
            cfg.anchor_base_size, cfg.anchor_scales, cfg.anchor_aspect_ratios, cfg.strides
        )
        self.det_head = (
            DetectionHead(cfg.channels, cfg.num_det_classes, cfg.num_anchors, NUM_LEVELS, cfg.head_shared)
            if "det" in cfg.tasks
            else None
        )
        self.seg_head = (
            SegmentationHead(cfg.channels, cfg.num_seg_classes, NUM_LEVELS, cfg.seg_channels, cfg.seg_full_res_refine)
            if "seg" in cfg.tasks
            else None
        )

    def encode(self, images: Tensor) -> list[Tensor]:
        """Neck outputs P3..P6 (the shared encoder; what feature distillation compares)."""
        return self.neck(self.backbone(images))

    def forward(self, images: Tensor, heads: tuple[str, ...] | None = None) -> dict[str, Tensor | list[Tensor]]:
        """``heads`` (default: every head the network has) says which heads run. Training runs only the heads
        that receive a loss from the batch, so a head's BatchNorm statistics never follow the other task's domain
        and no compute goes to outputs nobody reads."""
        features = self.encode(images)
        out: dict[str, Tensor | list[Tensor]] = {"features": features}
        if self.det_head is not None and (heads is None or "det" in heads):
            out["cls_logits"], out["box_deltas"] = self.det_head(features)
        if self.seg_head is not None and (heads is None or "seg" in heads):
            out["seg_logits"] = self.seg_head(features, images.shape[-2:])
        return out

    def anchors_for(self, image_size: tuple[int, int], device: torch.device | str | None = None) -> Tensor:
        """(A_total, 4) xyxy pixel anchors for an input of size (H, W), in the order of ``cls_logits`` rows."""
        if device is None:
            device = next(self.parameters()).device
        return self.anchor_generator.for_image(image_size, torch.device(device))


def build_model(cfg: ModelConfig | dict | str) -> MultiTaskNet:
    """Build a network from a ModelConfig (or anything :func:`load_model_config` accepts)."""
    return MultiTaskNet(load_model_config(cfg))


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (BatchNorm affine weights included, running statistics not)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def parameter_counts(model: MultiTaskNet) -> dict[str, int]:
    """Per-part parameter counts: backbone, neck, encoder (= backbone + neck), det_head, seg_head, total."""
    parts = {
        "backbone": count_parameters(model.backbone),
        "neck": count_parameters(model.neck),
        "det_head": count_parameters(model.det_head) if model.det_head is not None else 0,
        "seg_head": count_parameters(model.seg_head) if model.seg_head is not None else 0,
    }
    parts["encoder"] = parts["backbone"] + parts["neck"]
    parts["total"] = count_parameters(model)
    return parts
