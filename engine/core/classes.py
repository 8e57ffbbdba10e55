"""ISPRS 2D semantic labelling classes, colours and the detection subset (REFERENCE §2-§3)."""

from __future__ import annotations

SEG_CLASSES: tuple[str, ...] = (
    "impervious",
    "building",
    "low_vegetation",
    "tree",
    "car",
    "clutter",
)
"""Segmentation class names; the index in this tuple is the class id stored in masks."""

PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 255, 255),
    (0, 0, 255),
    (0, 255, 255),
    (0, 255, 0),
    (255, 255, 0),
    (255, 0, 0),
)
"""RGB colour of each segmentation class in ISPRS label tiles."""

BOUNDARY_COLOR: tuple[int, int, int] = (0, 0, 0)
"""Black: eroded boundary / undefined pixels in the ``noBoundary`` label files."""

IGNORE_INDEX: int = 255
"""Mask value for pixels that carry no label (eroded boundary, padding, nodata)."""

DET_CLASSES: tuple[str, ...] = ("building", "tree", "car")
"""Detection classes: blobs of these segmentation classes become boxes."""

DET_TO_SEG: tuple[int, ...] = tuple(SEG_CLASSES.index(name) for name in DET_CLASSES)
"""Segmentation class id of each detection class."""
