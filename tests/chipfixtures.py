"""Writes a tiny chip dataset in the documented format (docs/ARCHITECTURE.md), for any engineer's tests.

Written by hand with numpy + json (independent of engine.chip / engine.data.chipstore), so readers are checked
against the documented format rather than against their own writer. Every chip holds one rectangle per detection
class at a known place (the car only on even chips), so tests know each box and its mask blob exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engine.core.atomic import write_json_atomic
from engine.core.classes import DET_CLASSES, IGNORE_INDEX, PALETTE, SEG_CLASSES

LOW_VEG = SEG_CLASSES.index("low_vegetation")
CLASS_LEVEL = np.array([0.55, 0.35, 0.45, 0.25, 0.85, 0.65])
"""Grey level (fraction of max) of each segmentation class in the chip images."""


def chip_objects(index: int, size: int = 64) -> list[tuple[int, int, int, int, str]]:
    """The rectangles of chip ``index`` as (x0, y0, x1, y1, det class name), x1/y1 exclusive."""
    s = size / 64
    objects = [
        (round((4 + index % 3) * s), round(6 * s), round((24 + index % 3) * s), round(22 * s), "building"),
        (round(36 * s), round((30 + index % 4) * s), round(52 * s), round((46 + index % 4) * s), "tree"),
    ]
    if index % 2 == 0:
        objects.append((round(10 * s), round(48 * s), round(30 * s), round(56 * s), "car"))
    return objects


def _chip(index: int, size: int, bands: int, max_value: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    mask = np.zeros((size, size), np.uint8)
    mask[:, size // 2 :] = LOW_VEG
    for x0, y0, x1, y1, name in chip_objects(index, size):
        mask[y0:y1, x0:x1] = SEG_CLASSES.index(name)
    # eroded: pixels whose 4-neighbourhood has another class become ignore (a 1-px boundary)
    padded = np.pad(mask, 1, mode="edge")
    boundary = np.zeros_like(mask, dtype=bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        boundary |= padded[dy : dy + size, dx : dx + size] != mask
    eroded = np.where(boundary, IGNORE_INDEX, mask).astype(np.uint8)
    ramp = np.linspace(0.0, 0.1, size)[None, :, None]  # left-right gradient makes flips visible in the image
    band_gain = np.linspace(1.0, 0.8, bands)[None, None, :]
    level = CLASS_LEVEL[mask][:, :, None] * band_gain + ramp + rng.normal(0, 0.02, (size, size, bands))
    image = np.clip(np.round(level * max_value), 0, max_value)
    return image, mask, eroded


def write_chip_dataset(
    root: str | os.PathLike[str],
    splits: dict[str, int] | None = None,
    size: int = 64,
    bands: tuple[str, ...] = ("nir", "red", "green"),
    dtype: str = "uint8",
    max_value: float | None = None,
    seed: int = 0,
) -> Path:
    """Write a complete chip dataset under ``root`` (default 6 train + 2 val chips of 64²) and return ``root``."""
    root = Path(root)
    splits = splits or {"train": 6, "val": 2}
    max_value = float(max_value if max_value is not None else np.iinfo(dtype).max)
    rng = np.random.default_rng(seed)
    chips = []
    train_images = []
    for split, count in splits.items():
        parts = [_chip(i, size, len(bands), max_value, rng) for i in range(count)]
        (root / split).mkdir(parents=True, exist_ok=True)
        images = np.stack([p[0] for p in parts]).astype(dtype)
        np.save(root / split / "images.npy", images)
        np.save(root / split / "masks.npy", np.stack([p[1] for p in parts]))
        np.save(root / split / "eroded.npy", np.stack([p[2] for p in parts]))
        if split == "train":
            train_images.append(images)
        for i in range(count):
            boxes = [[x0, y0, x1, y1, name] for x0, y0, x1, y1, name in chip_objects(i, size)]
            window = [i * size, 0, size, size]
            chips.append({"split": split, "index": i, "tile": f"tile_{split}", "window": window, "boxes": boxes})
    scaled = np.concatenate(train_images or [np.zeros((1, 1, 1, len(bands)))]).astype(np.float64) / max_value
    manifest = {
        "format": "pmtl-chips",
        "version": 1,
        "complete": True,
        "dataset": "custom",
        "bands": list(bands),
        "seg_classes": list(SEG_CLASSES),
        "palette": [list(c) for c in PALETTE],
        "det_classes": list(DET_CLASSES),
        "ignore_index": IGNORE_INDEX,
        "chip_size": size,
        "stride": size,
        "gsd": 0.09,
        "value_scaling": {"dtype": dtype, "max": max_value},
        "mean": scaled.mean(axis=(0, 1, 2)).tolist(),
        "std": scaled.std(axis=(0, 1, 2)).tolist(),
        "box_params": {"connectivity": 8, "min_area": 1},
        "tiles": {
            f"tile_{split}": {
                "crs": "",
                "geotransform": [0.0, 0.09, 0.0, 0.0, 0.0, -0.09],
                "width": size * count,
                "height": size,
                "split": split,
            }
            for split, count in splits.items()
        },
        "splits": dict(splits),
        "chips": chips,
    }
    write_json_atomic(root / "manifest.json", manifest)
    return root
