"""``predict_raster``: tiled, georeferenced inference of an exported ONNX model over a raster of any size."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Union

import numpy as np
from osgeo import gdal

from engine.core.atomic import atomic_path, temporary_sibling
from engine.core.errors import ConfigError, param_ref
from engine.core.progress import Progress, check_cancel
from engine.predict import outputs as out
from engine.predict.detections import (
    Detections,
    default_thresholds,
    fuse_seam_fragments,
    merge_across_tiles,
    tile_detections,
    truncated_at_seams,
)
from engine.predict.model import OnnxModel
from engine.predict.raster import Source, WindowReader, load_aoi, open_source
from engine.predict.tiling import Blender, FinalBlock, TileGrid

log = logging.getLogger("engine.predict")

PathLike = Union[str, os.PathLike]


@dataclasses.dataclass
class PredictSummary:
    """What ran and how fast: ``provider`` is the onnxruntime execution provider that actually ran the model."""

    provider: str
    tiles: int
    tiles_run: int
    seconds: float
    megapixels: float
    mpx_per_s: float
    detections: int
    raw_detections: int
    warnings: list[str]
    outputs: dict[str, str]
    model_source: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _Tile:
    i: int
    j: int
    x: int
    y: int
    data: np.ndarray | None
    valid: np.ndarray


def _read_batch(src: Source, grid: TileGrid, chunk: Sequence[tuple[int, int]]) -> list[_Tile]:
    tiles = []
    for i, j in chunk:
        x, y = grid.origin(i, j)
        data, valid = src.read(x, y, grid.tile)
        tiles.append(_Tile(i, j, x, y, data if valid.any() else None, valid))
    return tiles


def _batches(src: Source, grid: TileGrid, batch_size: int) -> Iterator[list[_Tile]]:
    """Tiles in raster order, batch by batch; the next batch is read in a thread while the model runs."""
    order = grid.tiles()
    chunks = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pmtl-read") as pool:
        pending = pool.submit(_read_batch, src, grid, chunks[0])
        for k in range(len(chunks)):
            tiles = pending.result()
            if k + 1 < len(chunks):
                pending = pool.submit(_read_batch, src, grid, chunks[k + 1])
            yield tiles


class _SegWriter:
    """Turns blended final blocks into class ids (and probabilities) written window by window."""

    def __init__(self, kind: str, classes: out.RasterOutput | None, probs: out.RasterOutput | None) -> None:
        self.kind, self.classes, self.probs = kind, classes, probs

    def write(self, block: FinalBlock, valid: np.ndarray) -> None:
        invalid = ~valid[: block.rows, : block.cols]
        if self.classes is not None:
            ids = block.data.argmax(axis=0).astype(np.uint8)
            ids[invalid] = out.NODATA
            self.classes.write(1, ids, block.x, block.y)
        if self.probs is not None:
            if self.kind == "logits":
                probs = out.softmax(block.data)
            else:
                probs = block.data / np.maximum(block.data.sum(axis=0, keepdims=True), 1e-12)
            scaled = (probs * out.PROB_SCALE + 0.5).astype(np.uint8)
            scaled[:, invalid] = out.NODATA
            for b in range(scaled.shape[0]):
                self.probs.write(b + 1, scaled[b], block.x, block.y)

    def outputs(self) -> list[out.RasterOutput]:
        return [o for o in (self.classes, self.probs) if o is not None]


def _tile_dets(
    model: OnnxModel, grid: TileGrid, tile: _Tile, scores: np.ndarray, boxes: np.ndarray, thresh: float | np.ndarray
):
    info = model.info
    b, s, lab = tile_detections(scores, boxes, thresh, info.iou_thresh, grid.tile)
    if len(s) == 0:
        return None
    cx = np.clip(((b[:, 0] + b[:, 2]) / 2).astype(int), 0, grid.tile - 1)
    cy = np.clip(((b[:, 1] + b[:, 3]) / 2).astype(int), 0, grid.tile - 1)
    keep = tile.valid[cy, cx]  # nodata / outside the AOI / past the raster edge: not predicted
    b, s, lab = b[keep], s[keep], lab[keep]
    ny, nx = len(grid.ys), len(grid.xs)
    trunc = truncated_at_seams(b, grid.tile, tile.j > 0, tile.j < nx - 1, tile.i > 0, tile.i < ny - 1)
    shift = np.array([tile.x, tile.y, tile.x, tile.y], np.float32)
    ids = np.tile(np.array([[tile.i, tile.j]], np.int64), (len(s), 1))
    return Detections(b + shift, s, lab, ids, trunc)


@dataclasses.dataclass
class _TileSink:
    """What happens to a batch after the model ran: per-tile detections kept, seg blended and written in order."""

    model: OnnxModel
    grid: TileGrid
    blender: Blender | None
    writer: _SegWriter | None
    detect: bool
    thresh: float | np.ndarray
    parts: list[Detections] = dataclasses.field(default_factory=list)

    def consume(self, tiles: list[_Tile], run: list[_Tile], result) -> None:
        if self.detect and result is not None and result.scores is not None:
            for k, tile in enumerate(run):
                found = _tile_dets(self.model, self.grid, tile, result.scores[k], result.boxes[k], self.thresh)
                if found is not None:
                    self.parts.append(found)
        if self.blender is not None:
            seg = {id(t): result.seg[k] for k, t in enumerate(run)} if run else {}
            for tile in tiles:
                block = self.blender.add(tile.i, tile.j, seg.get(id(tile)))
                if block is not None:
                    self.writer.write(block, tile.valid)


def _run_tiles(
    model: OnnxModel,
    src: Source,
    grid: TileGrid,
    batch_size: int,
    writer: _SegWriter | None,
    detect: bool,
    thresh: float | np.ndarray,
    progress: Progress | None,
) -> tuple[list[Detections], int]:
    """The sliding window: read (one batch ahead, in a thread), run, then blend + write seg and collect per-tile
    detections in another thread while the model runs the next batch (onnxruntime releases the GIL; with a fast
    int8 model this work would otherwise add ~10 % to the run). Returns the detections and how many tiles ran
    (tiles with no valid pixel are skipped)."""
    blender = Blender(grid, len(model.info.seg_classes)) if writer is not None else None
    sink = _TileSink(model, grid, blender, writer, detect, thresh)
    done = tiles_run = 0
    pending = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pmtl-post") as post:
        for tiles in _batches(src, grid, batch_size):
            check_cancel(progress)
            run = [t for t in tiles if t.data is not None]
            result = model.run(np.stack([t.data for t in run])) if run else None
            tiles_run += len(run)
            if pending is not None:
                pending.result()  # one batch in flight: bounded memory, errors surface here
            pending = post.submit(sink.consume, tiles, run, result)
            done += len(tiles)
            if progress is not None:
                progress.report(0.95 * done / len(grid), f"tile {done}/{len(grid)}")
        if pending is not None:
            pending.result()
    return sink.parts, tiles_run


def _check_request(model: OnnxModel, out_raster, out_vector, out_probs, out_polygons) -> None:
    if not any((out_raster, out_vector, out_probs, out_polygons)):
        raise ConfigError("predict: give at least one output (out_raster, out_vector, out_probs or out_polygons)")
    info = model.info
    if info.seg_output is None and (out_raster or out_probs or out_polygons):
        raise ConfigError(
            f"model '{model.path}' has no segmentation output: out_raster/out_probs/out_polygons unusable"
        )
    if info.det_scores_output is None and out_vector:
        raise ConfigError(f"model '{model.path}' has no detection outputs: out_vector unusable")
    for value, name in ((out_raster, "out_raster"), (out_vector, "out_vector"), (out_probs, "out_probs")):
        out.check_writable(value, name)
    out.check_writable(out_polygons, "out_polygons")


def predict_raster(
    model_path: PathLike | OnnxModel,
    input_path: PathLike | WindowReader,
    out_raster: PathLike | None = None,
    out_vector: PathLike | None = None,
    *,
    aoi: PathLike | None = None,
    bands: Sequence[int] | None = None,
    overlap: int | None = None,
    batch_size: int | None = 4,
    out_probs: PathLike | None = None,
    out_polygons: PathLike | None = None,
    device: str = "auto",
    threads: int | None = None,
    score_thresh: float | None = None,
    value_max: float | None = None,
    gsd_tolerance: float = 0.25,
    cache_mb: int = 32,
    progress: Progress | None = None,
) -> PredictSummary:
    """Run ``model_path`` over ``input_path`` tile by tile; write the requested outputs on the input's grid.

    ``input_path``: a raster file, a GDAL dataset name (``/vsizip/…``, ``GPKG:file.gpkg:table``) or a
    :class:`~engine.predict.raster.WindowReader` (e.g. a QGIS layer read through its provider), whose grid is used.

    Outputs: ``out_raster`` uint8 class map (ISPRS colours, 255 = nodata), ``out_probs`` per-class uint8
    probabilities (×250), ``out_polygons`` the class map as polygons, ``out_vector`` detections (one layer, fields
    class, class_id, score). Every output appears only if the whole run succeeds. ``bands``: 1-based raster band
    numbers in the model's band order. ``overlap`` defaults to the model's recommendation. ``model_path`` may be
    an open :class:`OnnxModel` (then ``device`` and ``threads`` are the ones it was opened with).
    """
    started = time.perf_counter()
    batch_size = 4 if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ConfigError(f"{param_ref('batch_size')}: expected a number >= 1, found {batch_size}")
    # an already-open model (the QGIS algorithm reads its metadata first) is used as it is, not loaded twice
    model = model_path if isinstance(model_path, OnnxModel) else OnnxModel(model_path, device=device, threads=threads)
    info = model.info
    _check_request(model, out_raster, out_vector, out_probs, out_polygons)
    notes = list(info.notes)
    if info.raw.get("precision") == "fp16" and model.provider == "CPUExecutionProvider":
        notes.append("fp16 model on the CPU provider (no CUDA in onnxruntime): slower than its fp32 or int8 export")
    for note in notes:
        log.warning(note)
    src = open_source(input_path, info, bands, value_max, gsd_tolerance, notes)
    if aoi is not None:
        src.aoi = load_aoi(aoi, src)
    overlap = info.overlap if overlap is None else int(overlap)
    grid = TileGrid(src.width, src.height, info.tile_size, overlap)
    thresh = default_thresholds(info) if score_thresh is None else float(score_thresh)
    log.info(
        "model %s on %s: %d tiles of %d px, provider %s", model.path, input_path, len(grid), grid.tile, model.provider
    )

    old_cache = gdal.GetCacheMax()
    gdal.SetCacheMax(int(cache_mb) * 1024 * 1024)  # bounded block cache: memory does not follow raster size
    raw_count = 0
    kept = Detections.empty()
    requested = {
        name: str(p)
        for name, p in (
            ("raster", out_raster),
            ("probs", out_probs),
            ("vector", out_vector),
            ("polygons", out_polygons),
        )
        if p is not None
    }
    try:
        with contextlib.ExitStack() as stack:
            final = {name: Path(stack.enter_context(atomic_path(p))) for name, p in requested.items()}

            def scratch(target: PathLike) -> Path:
                path = temporary_sibling(target, ".tif")
                stack.callback(lambda: path.unlink(missing_ok=True))
                return path

            need_classes = out_raster is not None or out_polygons is not None
            class_final = final.get("raster") or (scratch(out_polygons) if need_classes else None)
            class_work = (scratch(class_final) if src.warped else class_final) if class_final else None
            prob_work = (scratch(final["probs"]) if src.warped else final["probs"]) if out_probs else None

            class_name = requested.get("raster") or requested.get("polygons")
            writer = _SegWriter(info.seg_kind, None, None)
            if class_work is not None:
                with out.writing(class_name):
                    writer.classes = out.RasterOutput(
                        class_name, out.create_class_map(class_work, src, info.seg_classes, info.seg_colors)
                    )
            if prob_work is not None:
                with out.writing(requested["probs"]):
                    writer.probs = out.RasterOutput(
                        requested["probs"], out.create_probabilities(prob_work, src, info.seg_classes)
                    )
            try:
                parts, tiles_run = _run_tiles(
                    model,
                    src,
                    grid,
                    batch_size,
                    writer if writer.outputs() else None,
                    out_vector is not None,
                    thresh,
                    progress,
                )
            except BaseException:
                for output in writer.outputs():
                    output.discard()
                raise
            for output in writer.outputs():
                output.close()  # flushed and checked: a full disk fails here, before any rename

            check_cancel(progress)
            if src.warped:
                if class_work is not None:
                    out.warp_to_input(class_work, class_final, src, "near", class_name)
                if prob_work is not None:
                    out.warp_to_input(prob_work, final["probs"], src, "bilinear", requested["probs"])
            if out_polygons is not None:
                count = out.polygonize(class_final, final["polygons"], info.seg_classes, requested["polygons"])
                log.info("%d segment polygons", count)
            if out_vector is not None:
                dets = fuse_seam_fragments(Detections.concat(parts))
                raw_count = len(dets)
                kept = dets.take(merge_across_tiles(dets, info.iou_thresh, info.ios_thresh))
                kept.boxes[:, 0::2] = np.clip(kept.boxes[:, 0::2], 0, src.width)
                kept.boxes[:, 1::2] = np.clip(kept.boxes[:, 1::2], 0, src.height)
                out.write_detections(
                    final["vector"], kept, info.det_classes, src, requested["vector"], colours=info.det_colors
                )
            check_cancel(progress)
    finally:
        gdal.SetCacheMax(old_cache)
    seconds = time.perf_counter() - started
    megapixels = src.width * src.height / 1e6
    if progress is not None:
        progress.report(1.0, "done")
    return PredictSummary(
        provider=model.provider,
        tiles=len(grid),
        tiles_run=tiles_run,
        seconds=seconds,
        megapixels=megapixels,
        mpx_per_s=megapixels / max(seconds, 1e-9),
        detections=len(kept),
        raw_detections=raw_count,
        warnings=notes,
        outputs=requested,
        model_source=info.source,
    )
