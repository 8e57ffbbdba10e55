"""Detection boxes from a segmentation mask: each connected blob of a detection class is one instance.

The paper turns the ISPRS segmentation labels into detection labels this way (REFERENCE §3). Components are
computed on the mask they are given — a chip's mask when chipping — so a blob cut by the chip border yields a box
clipped to the chip, and a blob whose parts only connect outside the chip yields one box per part.

Defaults: ``connectivity=8`` (diagonal neighbours join a blob, so thin diagonal structures stay one instance) and
``min_area=DEFAULT_MIN_AREA`` px (slivers left by clipping at chip borders and label noise are dropped; a car
is ~1,000 px at 9 cm and ~3,000 px at 5 cm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from engine.core.classes import DET_CLASSES, SEG_CLASSES
from engine.core.errors import ConfigError

DEFAULT_CONNECTIVITY = 8
DEFAULT_MIN_AREA = 16

_STRUCTURES = {4: ndimage.generate_binary_structure(2, 1), 8: ndimage.generate_binary_structure(2, 2)}


@dataclass(frozen=True)
class BoxParams:
    """How blobs become boxes; recorded in the chip manifest as ``box_params``."""

    connectivity: int = DEFAULT_CONNECTIVITY
    min_area: int = DEFAULT_MIN_AREA

    def __post_init__(self) -> None:
        if self.connectivity not in _STRUCTURES:
            raise ConfigError(f"box connectivity: expected 4 or 8, found {self.connectivity!r}")
        if int(self.min_area) != self.min_area or self.min_area < 1:
            raise ConfigError(f"box min_area: expected an integer number of pixels >= 1, found {self.min_area!r}")

    def as_dict(self) -> dict[str, int]:
        return {"connectivity": int(self.connectivity), "min_area": int(self.min_area)}


def boxes_from_mask(
    mask: np.ndarray,
    params: BoxParams | None = None,
    class_counts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the connected blobs of each detection class in an (H, W) class-index mask.

    Returns ``(boxes, labels)``: int32 (K, 4) ``x0, y0, x1, y1`` in pixels (x1/y1 exclusive) and int64 (K,)
    detection-class indices (into ``DET_CLASSES``), ordered by class then by the blob's first pixel in raster
    order. ``class_counts`` (pixels per class index, e.g. a bincount of the mask) lets absent classes be skipped.
    """
    params = params or BoxParams()
    structure = _STRUCTURES[params.connectivity]
    all_boxes: list[np.ndarray] = []
    all_labels: list[np.ndarray] = []
    for det_index, name in enumerate(DET_CLASSES):
        seg_index = SEG_CLASSES.index(name)
        if class_counts is not None and (seg_index >= len(class_counts) or class_counts[seg_index] < params.min_area):
            continue
        components, count = ndimage.label(mask == seg_index, structure=structure)
        if count == 0:
            continue
        areas = np.bincount(components.ravel(), minlength=count + 1)[1:]
        slices = ndimage.find_objects(components)
        keep = np.flatnonzero(areas >= params.min_area)
        if keep.size == 0:
            continue
        boxes = np.array(
            [(slices[k][1].start, slices[k][0].start, slices[k][1].stop, slices[k][0].stop) for k in keep],
            dtype=np.int32,
        )
        all_boxes.append(boxes)
        all_labels.append(np.full(len(boxes), det_index, dtype=np.int64))
    if not all_boxes:
        return np.zeros((0, 4), np.int32), np.zeros((0,), np.int64)
    return np.concatenate(all_boxes), np.concatenate(all_labels)
