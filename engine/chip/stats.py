"""What a chipping run reports: per-band moments, class pixel counts, and the summary printed by the CLI."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from engine.core.classes import SEG_CLASSES


@dataclass
class ChipSummary:
    """What a chipping run produced (returned by the API, printed by the CLI, kept in the manifest)."""

    out_dir: str
    chips_per_split: dict[str, int]
    boxes_per_class: dict[str, int]
    class_pixel_shares: dict[str, float]
    """Share of each class among the labelled (non-ignore) pixels of the chipped tiles, all splits."""
    off_palette_pixels: dict[str, int] = field(default_factory=dict)
    """Label file → pixels mapped to the nearest palette colour (files without any are not listed)."""
    value_scaling: dict[str, Any] = field(default_factory=dict)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    megapixels: float = 0.0
    """Tile pixels read (millions)."""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        lines = [f"chip dataset: {self.out_dir}"]
        lines.append("chips per split: " + ", ".join(f"{k} {v}" for k, v in self.chips_per_split.items()))
        lines.append("boxes per class: " + ", ".join(f"{k} {v}" for k, v in self.boxes_per_class.items()))
        lines.append("class pixel shares: " + ", ".join(f"{k} {v:.1%}" for k, v in self.class_pixel_shares.items()))
        scaling = self.value_scaling
        lines.append(f"value scaling: {scaling.get('dtype')} / {scaling.get('max')}")
        if self.off_palette_pixels:
            total = sum(self.off_palette_pixels.values())
            files = len(self.off_palette_pixels)
            lines.append(f"off-palette label pixels mapped to the nearest colour: {total} in {files} file(s)")
        rate = self.megapixels / self.seconds if self.seconds > 0 else float("nan")
        lines.append(f"read {self.megapixels:.1f} Mpx in {self.seconds:.1f} s ({rate:.1f} Mpx/s)")
        return "\n".join(lines)


STATS_SAMPLE = 250_000
"""Pixels per tile for band statistics and class shares: all of a smaller tile, a regular grid (every k-th row
and column, weighted k²) of a larger one — plenty for normalisation constants and shares, at a fraction of the
cost of an exact pass (which cost as much as the rest of chipping)."""


def _sample_step(height: int, width: int) -> int:
    return max(1, int(math.sqrt(height * width / STATS_SAMPLE)))


class TileStats:
    """Per-band moments (float64 Gram matrix with a ones column) and class pixel counts, accumulated per tile.

    A tile's pixels count once, so the statistics describe the area the chips cover without the double counting
    of overlapping windows (and without padding).
    """

    def __init__(self, bands: int) -> None:
        self.bands = bands
        self.gram = np.zeros((bands + 1, bands + 1), np.float64)
        self.class_px = np.zeros(256, np.int64)

    def add_image(self, image: np.ndarray) -> None:
        height, width, bands = image.shape
        step = _sample_step(height, width)
        sample = image[::step, ::step].reshape(-1, bands)
        flat = np.empty((len(sample), bands + 1), np.float64)
        flat[:, :bands] = sample
        flat[:, bands] = 1.0
        self.gram += (flat.T @ flat) * step**2

    def add_mask(self, mask: np.ndarray) -> None:
        step = _sample_step(*mask.shape)
        self.class_px += np.bincount(mask[::step, ::step].ravel(), minlength=256) * step**2

    def mean_std(self, scale: float) -> tuple[list[float], list[float]]:
        n = self.gram[-1, -1]
        if n == 0:
            return [0.0] * self.bands, [1.0] * self.bands
        mean = self.gram[-1, :-1] / n
        var = np.maximum(np.diag(self.gram)[:-1] / n - mean**2, 0.0)
        return (mean / scale).tolist(), (np.sqrt(var) / scale).tolist()

    def class_shares(self, names: Sequence[str] = SEG_CLASSES) -> dict[str, float]:
        labelled = self.class_px[: len(names)]
        shares = labelled / max(int(labelled.sum()), 1)
        return {name: round(float(s), 6) for name, s in zip(names, shares)}
