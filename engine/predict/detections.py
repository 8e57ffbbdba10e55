"""Detection post-processing without torch: per-tile score filter + class-aware NMS, and the cross-tile merge.

Inference must run where only numpy, GDAL and onnxruntime exist (QGIS' Python, the GPU machine), so the greedy NMS
is written here in numpy; tests check it against ``torchvision.ops.batched_nms``.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

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
            np.zeros(0, np.uint8),
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


def default_thresholds(info: Any) -> float | np.ndarray:
    """A model's own detection thresholds (:class:`~engine.core.modelio.ModelInfo`): one per class (D,) when its
    metadata records them (the best validation F1 of each class), else its single ``score_thresh``."""
    per_class = info.head("det").class_score_thresh  # one per class (HeadSpec checks the count)
    if per_class is not None:
        return np.asarray(per_class, np.float32)
    return float(info.score_thresh)


def tile_detections(
    scores: np.ndarray,
    boxes: np.ndarray,
    score_thresh: float | np.ndarray,
    iou_thresh: float,
    tile: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One tile's graph outputs (A, D) sigmoid scores and (A, 4) boxes → kept (boxes, scores, labels), boxes
    clipped to the tile. Mirrors ``engine.models.postprocess_detections`` (every anchor×class scoring at least the
    threshold, as ``engine.evaluate.detection.f1_optimal_score`` chose it; ``score_thresh`` one number, or one per
    class (D,))."""
    anchor_idx, labels = np.nonzero(scores >= score_thresh)
    if anchor_idx.size == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    picked = np.clip(boxes[anchor_idx], 0.0, float(tile)).astype(np.float32)
    picked_scores = scores[anchor_idx, labels].astype(np.float32)
    keep = nms(picked, picked_scores, labels, iou_thresh)
    return picked[keep], picked_scores[keep], labels[keep].astype(np.int64)


LEFT, TOP, RIGHT, BOTTOM = 1, 2, 4, 8
"""Bits of :attr:`Detections.truncated`: which tile border a box touches."""


def truncated_at_seams(
    boxes: np.ndarray, tile: int, has_left: bool, has_right: bool, has_top: bool, has_bottom: bool, margin: float = 1.0
) -> np.ndarray:
    """Per tile-pixel box, the sides (bit mask) where it touches a tile border behind which another tile lies."""
    out = np.zeros(len(boxes), np.uint8)
    for present, side, cut in (
        (has_left, LEFT, boxes[:, 0] <= margin),
        (has_top, TOP, boxes[:, 1] <= margin),
        (has_right, RIGHT, boxes[:, 2] >= tile - margin),
        (has_bottom, BOTTOM, boxes[:, 3] >= tile - margin),
    ):
        if present:
            out |= np.where(cut, side, 0).astype(np.uint8)
    return out


def _span_iou(a0: np.ndarray, a1: np.ndarray, b0: np.ndarray, b1: np.ndarray) -> np.ndarray:
    """Intersection over union of intervals [a0, a1] (column) and [b0, b1] (row): a (len(a), len(b)) matrix."""
    inter = np.maximum(np.minimum(a1[:, None], b1[None, :]) - np.maximum(a0[:, None], b0[None, :]), 0.0)
    union = (a1 - a0)[:, None] + (b1 - b0)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


_SEAMS = ((RIGHT, LEFT, (0, 1)), (BOTTOM, TOP, (1, 0)))
"""(side of box a, facing side of box b, offset of b's tile from a's): the two kinds of seam between tiles."""


def _continues_across(a: np.ndarray, b: np.ndarray, side: int, min_overlap: float, margin: float = 1.0) -> np.ndarray:
    """(len(a), len(b)) True where box b (next tile to the right / below) continues box a across their seam.

    An object cut by both facing borders crosses the whole band the two tiles share, so its part in tile a spans
    from before b's start up to a's border, and its part in tile b from b's border past a's end: a starts no later
    than b, b ends no earlier than a, and they meet (touching counts: with no overlap the borders coincide). Two
    different objects, each whole in one tile and cut in the other, fail this. Along the seam both parts span
    mostly the same extent (1-D IoU ≥ ``min_overlap``). ``margin``: the border tolerance of
    :func:`truncated_at_seams`.
    """
    start, end, lo, hi = (0, 2, 1, 3) if side == RIGHT else (1, 3, 0, 2)
    a_start, a_end = a[:, start, None], a[:, end, None]
    b_start, b_end = b[None, :, start], b[None, :, end]
    spans_band = (a_start <= b_start + margin) & (b_end >= a_end - margin) & (a_end >= b_start - margin)
    return spans_band & (_span_iou(a[:, lo], a[:, hi], b[:, lo], b[:, hi]) >= min_overlap)


def _seam_matches(
    dets: Detections, cut_a: list[int], cut_b: list[int], side: int, min_overlap: float
) -> list[tuple[int, int]]:
    """One-to-one matches across one seam, most confident pairs first (a pair's confidence: its lower score), so
    that a confident part is joined to its confident continuation, not to a low-score box that happens to align."""
    if not cut_a or not cut_b:
        return []
    ia, ib = np.asarray(cut_a), np.asarray(cut_b)
    ok = _continues_across(dets.boxes[ia], dets.boxes[ib], side, min_overlap)
    ok &= dets.labels[ia][:, None] == dets.labels[ib][None, :]
    rows, cols = np.nonzero(ok)
    confidence = np.minimum(dets.scores[ia[rows]], dets.scores[ib[cols]])
    used: set[int] = set()
    pairs = []
    for k in np.argsort(-confidence, kind="stable"):
        a, b = int(ia[rows[k]]), int(ib[cols[k]])
        if a not in used and b not in used:
            used.update((a, b))
            pairs.append((a, b))
    return pairs


def _facing_pairs(dets: Detections, min_overlap: float) -> list[tuple[int, int]]:
    """Pairs (a, b) of same-class boxes from side-by-side tiles, each cut on the side facing the other, one
    continuing the other across the seam (matched one-to-one per seam)."""
    by_tile: dict[tuple[int, int], list[int]] = defaultdict(list)
    for k in np.flatnonzero(dets.truncated):
        by_tile[(int(dets.tiles[k, 0]), int(dets.tiles[k, 1]))].append(int(k))
    pairs = []
    for (ti, tj), members in by_tile.items():
        for side, facing, (di, dj) in _SEAMS:
            cut_a = [m for m in members if dets.truncated[m] & side]
            cut_b = [m for m in by_tile.get((ti + di, tj + dj), ()) if dets.truncated[m] & facing]
            pairs += _seam_matches(dets, cut_a, cut_b, side, min_overlap)
    return pairs


def _components(count: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    """Connected components (union-find) of ``count`` items joined by ``pairs``, in order of their first item."""
    parent = list(range(count))
    for a, b in pairs:
        ra, rb = a, b
        while parent[ra] != ra:
            ra = parent[ra]
        while parent[rb] != rb:
            rb = parent[rb]
        parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = defaultdict(list)
    for k in range(count):
        r = k
        while parent[r] != r:
            r = parent[r]
        groups[r].append(k)
    return list(groups.values())


def fuse_seam_fragments(dets: Detections, min_overlap: float = 0.7) -> Detections:
    """Join the parts of objects larger than the tile overlap, which no tile sees whole.

    Each tile reports the part of such an object it sees, cut at its border; two parts from side-by-side tiles (same
    class, each cut on the side facing the other, overlapping across the shared band, and covering along the seam
    mostly the same extent: 1-D IoU ≥ ``min_overlap``), matched one-to-one per seam, are one object. Connected
    parts become their union box, with the highest score and the tile of that part, no longer truncated; the rest is
    unchanged.
    """
    pairs = _facing_pairs(dets, min_overlap)
    if not pairs:
        return dets
    groups = _components(len(dets), pairs)
    fused = dets.take(np.asarray([max(g, key=lambda k: dets.scores[k]) for g in groups], np.int64))
    for n, members in enumerate(groups):
        if len(members) > 1:
            parts = dets.boxes[members]
            fused.boxes[n] = [*parts[:, :2].min(axis=0), *parts[:, 2:].max(axis=0)]
            fused.truncated[n] = 0
    return fused


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
    order = np.lexsort((-dets.scores, dets.truncated > 0))
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
