"""Detection post-processing without torch: per-tile score filter + class-aware NMS, and the cross-tile merge.

Inference must run where only numpy, GDAL and onnxruntime exist (QGIS' Python, the GPU machine), so the greedy NMS
is written here in numpy; tests check it against ``torchvision.ops.batched_nms``.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np


@dataclasses.dataclass
class Detections:
    """N detections: ``boxes`` (N, 4) xyxy px, ``scores`` (N,), ``labels`` (N,) class ids, and where they came
    from: ``tiles`` (N, 2) tile (row, column), ``truncated`` (N,) True when the box touches a tile border that has
    a neighbouring tile (the object may continue in the next tile)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    tiles: np.ndarray
    truncated: np.ndarray

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            np.zeros((0, 4), np.float32),
            np.zeros(0, np.float32),
            np.zeros(0, np.int64),
            np.zeros((0, 2), np.int64),
            np.zeros(0, bool),
        )

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, index: np.ndarray) -> Detections:
        return Detections(*(a[index] for a in dataclasses.astuple(self)))

    @classmethod
    def concat(cls, parts: list[Detections]) -> Detections:
        if not parts:
            return cls.empty()
        fields = zip(*(dataclasses.astuple(p) for p in parts))
        return cls(*(np.concatenate(f) for f in fields))


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.maximum(boxes[..., 2] - boxes[..., 0], 0) * np.maximum(boxes[..., 3] - boxes[..., 1], 0)


def _intersection(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Called once per kept box in NMS and the merge: np.maximum, not np.clip (10x its Python overhead)."""
    w = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    h = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    return np.maximum(w, 0) * np.maximum(h, 0)


def nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Indices kept by class-aware greedy NMS, by decreasing score (same rule as torchvision's batched_nms:
    a box is dropped when its IoU with a kept, higher-scoring box of its class is > ``iou_thresh``)."""
    order = np.argsort(-scores, kind="stable")
    areas = _area(boxes)
    keep: list[int] = []
    while order.size:
        k = order[0]
        keep.append(int(k))
        rest = order[1:]
        inter = _intersection(boxes[k], boxes[rest])
        iou = inter / np.maximum(areas[k] + areas[rest] - inter, 1e-12)
        order = rest[(iou <= iou_thresh) | (labels[rest] != labels[k])]
    return np.asarray(keep, dtype=np.int64)


def tile_detections(
    scores: np.ndarray,
    boxes: np.ndarray,
    score_thresh: float,
    iou_thresh: float,
    tile: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One tile's graph outputs (A, D) sigmoid scores and (A, 4) boxes → kept (boxes, scores, labels), boxes
    clipped to the tile. Mirrors ``engine.models.postprocess_detections`` (every anchor×class above threshold)."""
    anchor_idx, labels = np.nonzero(scores > score_thresh)
    if anchor_idx.size == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    picked = np.clip(boxes[anchor_idx], 0.0, float(tile)).astype(np.float32)
    picked_scores = scores[anchor_idx, labels].astype(np.float32)
    keep = nms(picked, picked_scores, labels, iou_thresh)
    return picked[keep], picked_scores[keep], labels[keep].astype(np.int64)


def truncated_at_seams(
    boxes: np.ndarray, tile: int, has_left: bool, has_right: bool, has_top: bool, has_bottom: bool, margin: float = 1.0
) -> np.ndarray:
    """True for tile-pixel boxes touching a tile side behind which another tile lies."""
    out = np.zeros(len(boxes), bool)
    if has_left:
        out |= boxes[:, 0] <= margin
    if has_top:
        out |= boxes[:, 1] <= margin
    if has_right:
        out |= boxes[:, 2] >= tile - margin
    if has_bottom:
        out |= boxes[:, 3] >= tile - margin
    return out


def merge_across_tiles(dets: Detections, iou_thresh: float, ios_thresh: float) -> np.ndarray:
    """Indices of ``dets`` (raster pixel boxes from all tiles) to keep, so each object is reported once.

    Greedy, complete boxes before truncated ones, then by score. A candidate is dropped when a kept box of the same
    class from the 3×3 neighbouring tiles overlaps it with IoU > ``iou_thresh`` (the same object seen by two
    tiles), or, if the candidate is cut by a seam, covers more than ``ios_thresh`` of its area (intersection over
    the smaller box: a truncated view of an object another tile saw whole). Only neighbouring tiles are compared,
    so the cost grows linearly with the number of detections.
    """
    if len(dets) == 0:
        return np.zeros(0, np.int64)
    order = np.lexsort((-dets.scores, dets.truncated))
    areas = _area(dets.boxes)
    kept_by_tile: dict[tuple[int, int], list[int]] = defaultdict(list)
    keep: list[int] = []
    for k in order:
        ti, tj = (int(v) for v in dets.tiles[k])
        near = [idx for di in (-1, 0, 1) for dj in (-1, 0, 1) for idx in kept_by_tile.get((ti + di, tj + dj), ())]
        if near:
            cand = np.asarray(near)
            cand = cand[dets.labels[cand] == dets.labels[k]]
            if cand.size:
                inter = _intersection(dets.boxes[k], dets.boxes[cand])
                iou = inter / np.maximum(areas[k] + areas[cand] - inter, 1e-12)
                ios = inter / np.maximum(np.minimum(areas[k], areas[cand]), 1e-12)
                other_tile = np.any(dets.tiles[cand] != dets.tiles[k], axis=1)
                if np.any(iou > iou_thresh) or (dets.truncated[k] and np.any(other_tile & (ios > ios_thresh))):
                    continue
        keep.append(int(k))
        kept_by_tile[(ti, tj)].append(int(k))
    return np.asarray(sorted(keep, key=lambda i: -dets.scores[i]), dtype=np.int64)
