"""Small test networks and model descriptions shared by the test modules (the fixtures that use them are in
``conftest.py``). Each network follows the engine's output contract (``features``, ``seg_logits``, and for
detection ``cls_logits`` / ``box_deltas`` with ``anchors_for``) and answers in a way a test can compute by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from engine.core.classes import DET_CLASSES, PALETTE, SEG_CLASSES

ISPRS_MEAN, ISPRS_STD = [0.45, 0.32, 0.31], [0.21, 0.15, 0.14]
"""Per-band statistics of a Vaihingen-like NIR-R-G chip set, in scaled [0, 1] units."""


def isprs_description(
    gsd: float = 0.09, dtype: str = "uint8", value_max: float = 255.0, classes: bool = True, **extra: Any
) -> dict:
    """What ``export_onnx`` needs to know about a Vaihingen-like NIR-R-G model: with the ISPRS classes, or
    (``classes=False``) without a class table, as a model exported before class tables existed."""
    description = {
        "bands": ["nir", "red", "green"],
        "value_scaling": {"dtype": dtype, "max": value_max},
        "mean": list(ISPRS_MEAN),
        "std": list(ISPRS_STD),
        "gsd": gsd,
    }
    if classes:
        description.update(
            seg_classes=list(SEG_CLASSES), palette=[list(c) for c in PALETTE], det_classes=list(DET_CLASSES)
        )
    return {**description, **extra}


def rgb_description(gsd: float) -> dict:
    """An R-G-B uint8 model standardised with mean 0.5 / std 0.25 and no class table (the ISPRS defaults apply)."""
    return {
        "bands": ["red", "green", "blue"],
        "value_scaling": {"dtype": "uint8", "max": 255.0},
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "gsd": gsd,
    }


class ColourSegmenter(nn.Module):
    """Segmentation only, one 1×1 convolution: the class follows the pixel colour (fast to export and run).
    ``weight_std`` re-draws the weights wider, for confident and varied class maps; ``None`` keeps torch's init."""

    def __init__(self, weight_std: float | None = 3.0) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, len(SEG_CLASSES), 1)
        if weight_std is not None:
            nn.init.normal_(self.conv.weight, std=weight_std)

    def forward(self, images: Tensor) -> dict[str, Any]:
        return {"features": [], "seg_logits": self.conv(images)}


def anchors_every_4px(image_hw: tuple[int, int]) -> Tensor:
    """16×16 anchors centred every 4 px (xyxy), row-major: the layout of :func:`bright_square_score`."""
    h, w = image_hw
    ys = torch.arange(h // 4 + 1, dtype=torch.float32) * 4
    xs = torch.arange(w // 4 + 1, dtype=torch.float32) * 4
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx - 8, yy - 8, xx + 8, yy + 8], dim=-1).reshape(-1, 4)


def bright_square_score(bright: Tensor) -> Tensor:
    """(B, A, 1) logits, high only where the 16×16 anchor of :func:`anchors_every_4px` is (almost) fully bright."""
    cover = F.avg_pool2d(bright, 16, stride=4, padding=8, count_include_pad=True)
    return (30.0 * (cover - 0.7)).flatten(1)[..., None]


def save_random_checkpoint(path: Path, cfg: Any, metadata: dict, seed: int = 0) -> Path:
    """A ``best.pt`` of an untrained network built from ``cfg`` (a ``ModelConfig``), with ``metadata``."""
    from engine.models import build_model
    from engine.models.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    state = build_model(cfg).state_dict()
    save_checkpoint(path, {"model_config": cfg.to_dict(), "model": state, "metadata": metadata})
    return path


def tiny_contract(heads: dict, tile: int, **fields: Any) -> Any:
    """A :class:`~engine.core.modelio.ModelContract` of a 3-band uint8 model with ``heads`` (task -> HeadSpec)
    for ``tile`` px tiles; ``fields`` replace any other field."""
    from engine.core.modelio import ModelContract

    base: dict[str, Any] = {
        "tasks": tuple(t for t in ("det", "seg") if t in heads),
        "bands": ("r", "g", "b"),
        "value_scaling": {"dtype": "uint8", "max": 255},
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
        "gsd": 0.1,
        "overlap": tile // 8,
    }
    return ModelContract(heads=heads, tile_size=tile, **{**base, **fields})
