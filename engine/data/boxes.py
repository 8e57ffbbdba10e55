"""Detection boxes from a segmentation mask: each connected blob of a detection class is one instance.

The paper turns the ISPRS segmentation labels into detection labels this way (REFERENCE §3). Components are
computed on the mask they are given — a chip's mask when chipping — so a blob cut by the chip border yields a box
clipped to the chip, and a blob whose parts only connect outside the chip yields one box per part.

Defaults: ``connectivity=8`` (diagonal neighbours join a blob, so thin diagonal structures stay one instance) and
``min_area=16`` px (slivers left by clipping at chip borders and label noise are dropped; a car is ~1,000 px at
9 cm and ~3,000 px at 5 cm).

How: the mask is cut into horizontal runs of equal class (one vectorised pass for all classes at once), runs of
the same class that touch in consecutive rows become graph edges, and ``scipy.sparse.csgraph`` finds the
components. The result equals ``scipy.ndimage.label`` + ``find_objects`` per class (tests check it on random
masks) at ~1/8 of the cost, which matters because boxes are computed for every chip of every tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from engine.core.classes import DET_TO_SEG
from engine.core.errors import ConfigError

DEFAULT_CONNECTIVITY = 8
DEFAULT_MIN_AREA = 16

_DET_INDEX = np.full(256, -1, np.int64)
_DET_INDEX[list(DET_TO_SEG)] = np.arange(len(DET_TO_SEG))
"""Segmentation class index → detection class index (-1: not a detection class)."""


@dataclass(frozen=True)
class BoxParams:
    """How blobs become boxes; recorded in the chip manifest as ``box_params``."""

    connectivity: int = DEFAULT_CONNECTIVITY
    min_area: int = DEFAULT_MIN_AREA

    def __post_init__(self) -> None:
        if self.connectivity not in (4, 8):
            raise ConfigError(f"box connectivity: expected 4 or 8, found {self.connectivity!r}")
        numeric = isinstance(self.min_area, (int, float, np.integer))
        if not numeric or int(self.min_area) != self.min_area or self.min_area < 1:
            raise ConfigError(f"box min_area: expected an integer number of pixels >= 1, found {self.min_area!r}")

    def as_dict(self) -> dict[str, int]:
        return {"connectivity": int(self.connectivity), "min_area": int(self.min_area)}


def _runs(mask: np.ndarray, det_index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row, x0, x1 (exclusive) and detection class of every run of a detection class, in raster order."""
    height, width = mask.shape
    change = np.empty((height, width), bool)
    change[:, 0] = True
    np.not_equal(mask[:, 1:], mask[:, :-1], out=change[:, 1:])
    starts = np.flatnonzero(change)
    rows = starts // width
    x0 = starts - rows * width
    following = np.append(starts[1:], height * width)
    x1 = np.minimum(following - rows * width, width)
    det = det_index[mask[rows, x0]]
    keep = det >= 0
    return rows[keep], x0[keep], x1[keep], det[keep]


def boxes_from_masks(
    masks: np.ndarray, params: BoxParams | None = None, det_index: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Boxes of the connected blobs of each detection class in each of N (H, W) class-index masks.

    Per mask: int32 (K, 4) ``x0, y0, x1, y1`` in pixels (x1/y1 exclusive) and int64 (K,) detection-class indices
    (into ``DET_CLASSES``), ordered by class, then by the blob's first pixel in raster order. Blobs smaller than
    ``params.min_area`` pixels are dropped. All masks go through one graph, so many chips cost little more than one.
    ``det_index``: 256-entry segmentation → detection class lookup (-1: not an object class); default ISPRS.
    """
    params = params or BoxParams()
    masks = np.asarray(masks).astype(np.uint8, copy=False)
    count, height, width = masks.shape
    rows, x0, x1, det = _runs(masks.reshape(count * height, width), _DET_INDEX if det_index is None else det_index)
    chip = rows // height
    rows = rows - chip * height
    n = len(rows)
    if n == 0:
        return [(np.zeros((0, 4), np.int32), np.zeros((0,), np.int64)) for _ in range(count)]
    # runs of row y-1 touching run [a, b) of row y: x1 > a - d and x0 < b + d (d = 1 lets diagonals touch);
    # keys row * span + x never collide across rows, and an empty row between masks keeps them apart
    touch = 1 if params.connectivity == 8 else 0
    span = width + 4
    key = (chip * (height + 1) + rows) * span
    lo = np.searchsorted(key + x1, key - span + x0 - touch, side="right")
    hi = np.searchsorted(key + x0, key - span + x1 + touch, side="left")
    pairs = np.maximum(hi - lo, 0)
    upper = np.repeat(np.arange(n), pairs)
    lower = np.arange(int(pairs.sum())) - np.repeat(np.cumsum(pairs) - pairs - lo, pairs)
    same = det[upper] == det[lower]
    graph = coo_matrix((np.ones(int(same.sum()), np.int8), (upper[same], lower[same])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    # components are numbered in order of their first run, i.e. by mask, then first pixel in raster order
    order = np.argsort(component, kind="stable")
    first = np.flatnonzero(np.r_[True, component[order][1:] != component[order][:-1]])
    area = np.add.reduceat((x1 - x0)[order], first)
    boxes = np.stack(
        [
            np.minimum.reduceat(x0[order], first),
            rows[order][first],
            np.maximum.reduceat(x1[order], first),
            np.maximum.reduceat(rows[order], first) + 1,
        ],
        axis=1,
    ).astype(np.int32)
    owner, labels = chip[order][first], det[order][first]
    keep = np.flatnonzero(area >= params.min_area)
    keep = keep[np.lexsort((keep, labels[keep], owner[keep]))]  # by mask, class, first pixel
    owner, boxes, labels = owner[keep], boxes[keep], labels[keep].astype(np.int64)
    bounds = np.searchsorted(owner, np.arange(count + 1))
    return [(boxes[a:b], labels[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def boxes_from_mask(mask: np.ndarray, params: BoxParams | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of one (H, W) class-index mask; see :func:`boxes_from_masks`."""
    return boxes_from_masks(np.asarray(mask)[None], params)[0]
