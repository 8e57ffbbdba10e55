"""The region's combined outputs, built by the client from the finished rasters' files: ``detections.gpkg`` (one
layer; an object cut by the border between two adjacent inputs is joined as ``engine.predict`` joins tile seams)
and ``classes.vrt`` over every class map.

Detections of every input are brought into one *frame*: the first input's CRS, at its GSD, with its origin at the
top-left of all inputs. When the inputs tile a regular grid (same size, edge to edge: the usual ortho delivery),
each input is a cell (row, column) of that grid and plays the part of a tile: boxes touching a border behind which
another input lies are cut there, and ``fuse_seam_fragments`` then ``merge_across_tiles`` join and deduplicate them.
Inputs that do not tile a grid keep their own detections (nothing to join).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from osgeo import gdal, osr

from engine.core.atomic import atomic_path
from engine.predict import outputs as out
from engine.predict.detections import BOTTOM, LEFT, RIGHT, TOP, Detections, fuse_seam_fragments, merge_across_tiles
from engine.predict.raster import Source, grid_dataset, srs_of

gdal.UseExceptions()
log = logging.getLogger("engine.region")

JOIN_MARGIN_PX: float = 1.0
"""Parts of an object on two inputs meet edge to edge (no overlap band as between tiles): each cut side is widened
by this many frame pixels so the seam test sees them continue one another, and narrowed back if left unjoined."""

_NEIGHBOURS = ((LEFT, (0, -1)), (RIGHT, (0, 1)), (TOP, (-1, 0)), (BOTTOM, (1, 0)))


@dataclasses.dataclass
class RasterParts:
    """One finished raster's detections (map boxes min x, min y, max x, max y), the raster borders each touches,
    and its working grid's extent, GSD and CRS."""

    stem: str
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    edges: np.ndarray
    extent: np.ndarray
    gsd: float
    wkt: str


def load_parts(path: str | os.PathLike[str], stem: str) -> RasterParts:
    with np.load(path, allow_pickle=False) as data:
        return RasterParts(
            stem=stem,
            boxes=data["boxes"],
            scores=data["scores"],
            labels=data["labels"],
            edges=data["edges"],
            extent=data["extent"],
            gsd=float(data["gsd"]),
            wkt=str(data["wkt"]),
        )


def _transform_boxes(boxes: np.ndarray, transform: osr.CoordinateTransformation) -> np.ndarray:
    """Map boxes into another CRS: the bounding box of their four transformed corners."""
    if len(boxes) == 0:
        return boxes
    xs = boxes[:, [0, 2, 2, 0]].reshape(-1)
    ys = boxes[:, [1, 1, 3, 3]].reshape(-1)
    moved = np.asarray(transform.TransformPoints(np.stack([xs, ys], axis=1).tolist()))
    mx, my = moved[:, 0].reshape(-1, 4), moved[:, 1].reshape(-1, 4)
    return np.stack([mx.min(axis=1), my.min(axis=1), mx.max(axis=1), my.max(axis=1)], axis=1)


def to_crs(parts: RasterParts, wkt: str) -> RasterParts:
    """``parts`` with boxes and extent in the CRS ``wkt`` (unchanged when it is already there)."""
    source, target = srs_of(parts.wkt), srs_of(wkt)
    if source is None or target is None or source.IsSame(target):
        return parts
    transform = osr.CoordinateTransformation(source, target)
    boxes = _transform_boxes(parts.boxes, transform)
    extent = _transform_boxes(parts.extent[None], transform)[0]
    return dataclasses.replace(parts, boxes=boxes, extent=extent, wkt=wkt)


@dataclasses.dataclass(frozen=True)
class Frame:
    """One pixel grid over every input: top-left corner, pixel size, size and CRS."""

    x0: float
    y0: float
    gsd: float
    width: int
    height: int
    wkt: str

    @classmethod
    def over(cls, parts: Sequence[RasterParts]) -> Frame:
        extents = np.stack([p.extent for p in parts])
        gsd = parts[0].gsd
        x0, y0 = float(extents[:, 0].min()), float(extents[:, 3].max())
        width = math.ceil((extents[:, 2].max() - x0) / gsd - 1e-6)
        height = math.ceil((y0 - extents[:, 1].min()) / gsd - 1e-6)
        return cls(x0, y0, gsd, max(width, 1), max(height, 1), parts[0].wkt)

    def pixels(self, boxes: np.ndarray) -> np.ndarray:
        """Map boxes (min x, min y, max x, max y) → frame pixel boxes (x0, y0, x1, y1)."""
        px = (boxes[:, [0, 2]] - self.x0) / self.gsd
        py = (self.y0 - boxes[:, [3, 1]]) / self.gsd
        return np.stack([px[:, 0], py[:, 0], px[:, 1], py[:, 1]], axis=1).astype(np.float32)

    def source(self) -> Source:
        """A band-less :class:`Source` carrying the frame's grid, for the detections writer."""
        gt = (self.x0, self.gsd, 0.0, self.y0, 0.0, -self.gsd)
        grid = grid_dataset(self.width, self.height, gt, self.wkt)
        empty = np.zeros((0, 1, 1), np.float32)
        return Source("region", grid, grid, [], empty, empty, False, windows=None)


def grid_cells(parts: Sequence[RasterParts], frame: Frame) -> list[tuple[int, int]] | None:
    """(row, column) of each input when they tile a regular grid (same size, origins on its lattice, each cell
    once); None otherwise. Tolerance: one frame pixel."""
    boxes = frame.pixels(np.stack([p.extent for p in parts]).astype(np.float64))
    sizes = boxes[:, 2:] - boxes[:, :2]
    if np.abs(sizes - sizes[0]).max() > 1.0 or sizes[0].min() <= 0:
        return None
    cells_f = boxes[:, [1, 0]] / sizes[0][[1, 0]]
    cells = np.rint(cells_f).astype(int)
    if (np.abs(cells_f - cells) * sizes[0][[1, 0]]).max() > 1.0:
        return None
    found = [(int(r), int(c)) for r, c in cells]
    return found if len(set(found)) == len(found) else None


def frame_detections(parts: Sequence[RasterParts], frame: Frame, cells: list[tuple[int, int]] | None) -> Detections:
    """Every input's detections in frame pixels; ``tiles`` the input's cell, ``truncated`` the borders it touches
    behind which another input lies (widened there by :data:`JOIN_MARGIN_PX`)."""
    cells = cells or [(3 * k, 3 * k) for k in range(len(parts))]  # not a grid: no two inputs are neighbours
    present = set(cells)
    chunks = []
    for part, (row, col) in zip(parts, cells):
        boxes = frame.pixels(part.boxes)
        cut = np.zeros(len(boxes), np.uint8)
        for side, (dr, dc) in _NEIGHBOURS:
            if (row + dr, col + dc) in present:
                cut |= (part.edges & side).astype(np.uint8)
        tiles = np.tile(np.array([[row, col]], np.int64), (len(boxes), 1))
        chunks.append(Detections(boxes, part.scores.astype(np.float32), part.labels.astype(np.int64), tiles, cut))
    return widen_cut_sides(Detections.concat(chunks), JOIN_MARGIN_PX)


def widen_cut_sides(dets: Detections, margin: float) -> Detections:
    """Move each truncated side of each box outwards by ``margin`` px (inwards when negative)."""
    boxes = dets.boxes.copy()
    for side, column, sign in ((LEFT, 0, -1), (TOP, 1, -1), (RIGHT, 2, 1), (BOTTOM, 3, 1)):
        boxes[:, column] += np.where(dets.truncated & side, sign * margin, 0.0).astype(np.float32)
    return dataclasses.replace(dets, boxes=boxes)


def join_across_inputs(
    parts: Sequence[RasterParts], iou_thresh: float, ios_thresh: float
) -> tuple[Detections, list[str], Frame]:
    """All inputs' detections as one set in the frame: seam parts joined, duplicates merged; with each object's
    source stem (the input of its most confident part)."""
    wkt = parts[0].wkt
    parts = [to_crs(p, wkt) for p in parts]
    frame = Frame.over(parts)
    cells = grid_cells(parts, frame)
    if cells is None and len(parts) > 1:
        log.info("the inputs do not tile a regular grid: objects on their borders are not joined")
    dets = frame_detections(parts, frame, cells)
    cut = dets.truncated > 0  # only objects on a border with another input take part: the cost follows the borders
    joined = fuse_seam_fragments(dets.take(np.flatnonzero(cut)))
    joined = widen_cut_sides(joined.take(merge_across_tiles(joined, iou_thresh, ios_thresh)), -JOIN_MARGIN_PX)
    kept = Detections.concat([dets.take(np.flatnonzero(~cut)), joined])
    by_cell = {cell: p.stem for cell, p in zip(cells or [(3 * k, 3 * k) for k in range(len(parts))], parts)}
    sources = [by_cell[(int(r), int(c))] for r, c in kept.tiles]
    return kept, sources, frame


def write_region_detections(
    path: Path,
    parts: Sequence[RasterParts],
    model_info,
) -> int:
    """``detections.gpkg`` (fields class, class_id, score, source) over every input; returns the object count."""
    if not parts:
        return 0
    kept, sources, frame = join_across_inputs(parts, model_info.iou_thresh, model_info.ios_thresh)
    with atomic_path(path) as tmp:
        out.write_detections(
            tmp, kept, model_info.head("det").classes, frame.source(), str(path), model_info.head("det").colors, sources
        )
    return len(kept)


def write_class_vrt(path: Path, class_maps: Sequence[Path]) -> None:
    """``classes.vrt`` over the class maps (GDAL stores sources beside the VRT relative to it: the folder can move).
    Class maps in another CRS than the first are left out by GDAL, with a warning."""
    with atomic_path(path) as tmp, out.writing(path):
        vrt = gdal.BuildVRT(str(tmp), [str(p) for p in class_maps], srcNodata=out.NODATA, VRTNodata=out.NODATA)
        first = gdal.Open(str(class_maps[0]))
        band, model_band = vrt.GetRasterBand(1), first.GetRasterBand(1)
        band.SetMetadata(model_band.GetMetadata())  # CLASS_NAMES: QGIS styles the mosaic like each class map
        band.SetDescription(model_band.GetDescription())
        band = model_band = first = None
        vrt = None  # written here, inside the error collection
