"""``predict_raster``: tiled, georeferenced inference of an exported ONNX model over a raster of any size."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Union

import numpy as np
from osgeo import gdal

from engine.core.atomic import atomic_path, temporary_sibling
from engine.core.errors import ConfigError, keyword_logger, param_ref, python_api
from engine.core.options import PredictOptions
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
from engine.predict.raster import MAX_GSD_RATIO, Source, WindowReader, grid_dataset, load_aoi, open_source
from engine.predict.tiling import Blender, FinalBlock, TileGrid

log = keyword_logger("engine.predict")

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


@dataclasses.dataclass(frozen=True)
class TileWindow:
    """Tile rows [``first``, ``stop``) of a raster's grid, predicted as one piece of a larger job (the region job's
    windows of a raster too big for one task). The row above ``first`` runs too, unwritten: its blend carries into
    row ``first``, so every pixel written is the one a whole-raster run writes. Detections come back per tile,
    unmerged: the job merges every window's at once, seams between windows like any other."""

    first: int
    stop: int

    def tiles(self, grid: TileGrid) -> list[tuple[int, int]]:
        """The tiles this window runs, in raster order (the blending row above included)."""
        return [(i, j) for i in range(max(self.first - 1, 0), self.stop) for j in range(len(grid.xs))]

    def pixel_rows(self, grid: TileGrid) -> tuple[int, int]:
        """The raster rows [y0, y1) this window writes."""
        y0 = grid.ys[self.first] if self.first > 0 else 0
        y1 = grid.ys[self.stop] if self.stop < len(grid.ys) else grid.height
        return y0, y1


def _batches(src: Source, grid: TileGrid, batch_size: int, order: list[tuple[int, int]]) -> Iterator[list[_Tile]]:
    """Tiles in raster order, batch by batch; the next batch is read in a thread while the model runs."""
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

    def __init__(
        self, kind: str, classes: out.RasterOutput | None, probs: out.RasterOutput | None, y0: int = 0
    ) -> None:
        self.kind, self.classes, self.probs = kind, classes, probs
        self.y0 = y0  # the first raster row of the outputs (a window's band)

    def write(self, block: FinalBlock, valid: np.ndarray) -> None:
        invalid = ~valid[: block.rows, : block.cols]
        if self.classes is not None:
            ids = block.data.argmax(axis=0).astype(np.uint8)
            ids[invalid] = out.NODATA
            self.classes.write(1, ids, block.x, block.y - self.y0)
        if self.probs is not None:
            if self.kind == "logits":
                probs = out.softmax(block.data)
            else:
                probs = block.data / np.maximum(block.data.sum(axis=0, keepdims=True), 1e-12)
            scaled = (probs * out.PROB_SCALE + 0.5).astype(np.uint8)
            scaled[:, invalid] = out.NODATA
            for b in range(scaled.shape[0]):
                self.probs.write(b + 1, scaled[b], block.x, block.y - self.y0)

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
    first_row: int = 0  # tile rows above it only blend (a window's extra row): nothing of theirs is kept
    parts: list[Detections] = dataclasses.field(default_factory=list)

    def consume(self, tiles: list[_Tile], run: list[_Tile], result) -> None:
        if self.detect and result is not None and result.scores is not None:
            for k, tile in enumerate(run):
                if tile.i < self.first_row:
                    continue
                found = _tile_dets(self.model, self.grid, tile, result.scores[k], result.boxes[k], self.thresh)
                if found is not None:
                    self.parts.append(found)
        if self.blender is not None:
            seg = {id(t): result.seg[k] for k, t in enumerate(run)} if run else {}
            for tile in tiles:
                block = self.blender.add(tile.i, tile.j, seg.get(id(tile)))
                if block is not None and tile.i >= self.first_row:
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
    window: TileWindow | None = None,
) -> tuple[list[Detections], int]:
    """The sliding window: read (one batch ahead, in a thread), run, then blend + write seg and collect per-tile
    detections in another thread while the model runs the next batch (onnxruntime releases the GIL; with a fast
    int8 model this work would otherwise add ~10 % to the run). Returns the detections and how many tiles ran
    (tiles with no valid pixel are skipped). ``window``: only those tile rows."""
    order = grid.tiles() if window is None else window.tiles(grid)
    first = 0 if window is None else window.first
    blender = Blender(grid, len(model.info.head("seg").classes), order[0][0]) if writer is not None else None
    sink = _TileSink(model, grid, blender, writer, detect, thresh, first)
    done = tiles_run = 0
    pending = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pmtl-post") as post:
        for tiles in _batches(src, grid, batch_size, order):
            check_cancel(progress)
            run = [t for t in tiles if t.data is not None]
            result = model.run(np.stack([t.data for t in run])) if run else None
            tiles_run += len(run)
            if pending is not None:
                pending.result()  # one batch in flight: bounded memory, errors surface here
            pending = post.submit(sink.consume, tiles, run, result)
            done += len(tiles)
            if progress is not None:
                progress.report(0.95 * done / len(order), f"tile {done}/{len(order)}")
        if pending is not None:
            pending.result()
    return sink.parts, tiles_run


def _check_request(model: OnnxModel, requested: dict[str, str], detect: bool) -> None:
    if not requested and not detect:
        raise ConfigError("predict: give at least one output (out_raster, out_vector, out_probs or out_polygons)")
    info = model.info
    if info.seg_output is None and requested.keys() & {"raster", "probs", "polygons"}:
        raise ConfigError(
            f"model '{model.path}' has no segmentation output: out_raster/out_probs/out_polygons unusable"
        )
    if info.det_scores_output is None and detect:
        raise ConfigError(f"model '{model.path}' has no detection outputs: out_vector unusable")
    for name, value in requested.items():
        out.check_writable(value, f"out_{name}")


@dataclasses.dataclass(frozen=True)
class RasterSettings:
    """The per-raster options of ``engine.predict`` (the region job passes the same to every raster): band
    mapping, AOI, tile overlap, batch, thresholds, value scaling, GSD limits and the GDAL block cache (MB)."""

    aoi: str | None = None
    bands: tuple[int, ...] | None = None
    overlap: int | None = None
    batch_size: int = PredictOptions.batch_size
    score_thresh: float | None = None
    value_max: float | None = None
    gsd_tolerance: float = 0.25
    max_gsd_ratio: float = MAX_GSD_RATIO
    cache_mb: int = 32

    def __post_init__(self) -> None:
        if int(self.batch_size) < 1:
            raise ConfigError(f"{param_ref('batch_size')}: expected a number >= 1, found {self.batch_size}")
        if not self.max_gsd_ratio > 1.0:
            raise ConfigError(f"{param_ref('max_gsd_ratio')}: expected a ratio > 1, found {self.max_gsd_ratio}")


@contextlib.contextmanager
def bounded_gdal_cache(megabytes: int) -> Iterator[None]:
    """GDAL's block cache capped at ``megabytes`` meanwhile (its default is a share of the machine's memory): the
    memory of reading, writing and warping does not follow the raster's size. Restored after."""
    old_cache = gdal.GetCacheMax()
    gdal.SetCacheMax(int(megabytes) * 1024 * 1024)
    try:
        yield
    finally:
        gdal.SetCacheMax(old_cache)


@dataclasses.dataclass
class Prediction:
    """One raster's result: the summary, and the detections kept (working-grid pixels of ``source``)."""

    summary: PredictSummary
    detections: Detections
    source: Source


def _open_model(model_path: PathLike | OnnxModel, device: str, threads: int | None) -> tuple[OnnxModel, list[str]]:
    """The model (an already-open one as it is, not loaded twice) and its notes, logged."""
    model = model_path if isinstance(model_path, OnnxModel) else OnnxModel(model_path, device=device, threads=threads)
    notes = list(model.info.notes)
    if model.info.raw.get("precision") == "fp16" and model.provider == "CPUExecutionProvider":
        notes.append("fp16 model on the CPU provider (no CUDA in onnxruntime): slower than its fp32 or int8 export")
    for note in notes:
        log.warning(note)
    return model, notes


def open_input(
    model: OnnxModel, input_path: PathLike | WindowReader, settings: RasterSettings, notes: list[str]
) -> Source:
    """The input as :class:`Source` (working grid chosen, GSD checked) with the AOI of ``settings``."""
    src = open_source(
        input_path,
        model.info,
        settings.bands,
        settings.value_max,
        settings.gsd_tolerance,
        notes,
        settings.max_gsd_ratio,
    )
    if settings.aoi is not None:
        src.aoi = load_aoi(settings.aoi, src)
    return src


@dataclasses.dataclass
class _Targets:
    """Where each output is written: ``final`` the temporary names renamed on success; the class map and
    probabilities go through a working-grid scratch file first when the input is warped."""

    requested: dict[str, str]
    final: dict[str, Path]
    class_final: Path | None = None
    class_work: Path | None = None
    prob_work: Path | None = None


def _targets(stack: contextlib.ExitStack, requested: dict[str, str], warped: bool) -> _Targets:
    final = {name: Path(stack.enter_context(atomic_path(p))) for name, p in requested.items()}

    def scratch(target: PathLike) -> Path:
        path = temporary_sibling(target, ".tif")
        stack.callback(lambda: path.unlink(missing_ok=True))
        return path

    targets = _Targets(requested, final)
    if "raster" in requested or "polygons" in requested:
        targets.class_final = final.get("raster") or scratch(requested["polygons"])
        targets.class_work = scratch(targets.class_final) if warped else targets.class_final
    if "probs" in requested:
        targets.prob_work = scratch(final["probs"]) if warped else final["probs"]
    return targets


def _open_writer(targets: _Targets, src: Source, info) -> _SegWriter:
    writer = _SegWriter(info.seg_kind, None, None)
    class_name = targets.requested.get("raster") or targets.requested.get("polygons")
    if targets.class_work is not None:
        with out.writing(class_name):
            writer.classes = out.RasterOutput(
                class_name,
                out.create_class_map(targets.class_work, src, info.head("seg").classes, info.head("seg").colors),
            )
    if targets.prob_work is not None:
        with out.writing(targets.requested["probs"]):
            writer.probs = out.RasterOutput(
                targets.requested["probs"], out.create_probabilities(targets.prob_work, src, info.head("seg").classes)
            )
    return writer


def _finish_rasters(targets: _Targets, src: Source, info) -> None:
    """Warp the working-grid rasters onto the input grid, then polygonise the class map."""
    requested = targets.requested
    if src.warped:
        class_name = requested.get("raster") or requested.get("polygons")
        if targets.class_work is not None:
            out.warp_to_input(targets.class_work, targets.class_final, src, "near", class_name)
        if targets.prob_work is not None:
            out.warp_to_input(targets.prob_work, targets.final["probs"], src, "bilinear", requested["probs"])
    if "polygons" in requested:
        count = out.polygonize(
            targets.class_final, targets.final["polygons"], info.head("seg").classes, requested["polygons"]
        )
        log.info("%d segment polygons", count)


def merge_detections(parts: list[Detections], info, width: int, height: int) -> tuple[Detections, int]:
    """Per-tile detections → one per object (seam fragments fused, duplicates merged), boxes clipped to the
    ``width`` × ``height`` raster; also returns how many there were before the merge."""
    dets = fuse_seam_fragments(Detections.concat(parts))
    kept = dets.take(merge_across_tiles(dets, info.iou_thresh, info.ios_thresh))
    kept.boxes[:, 0::2] = np.clip(kept.boxes[:, 0::2], 0, width)
    kept.boxes[:, 1::2] = np.clip(kept.boxes[:, 1::2], 0, height)
    return kept, len(dets)


def tile_plan(model: OnnxModel, src: Source, settings: RasterSettings) -> tuple[TileGrid, float | np.ndarray]:
    """The raster's tile grid (the model's tile, the overlap asked for or the model's) and detection thresholds."""
    info = model.info
    overlap = info.overlap if settings.overlap is None else int(settings.overlap)
    grid = TileGrid(src.width, src.height, info.tile_size, overlap)
    thresh = default_thresholds(info) if settings.score_thresh is None else float(settings.score_thresh)
    log.info(
        "model %s on %s: %d tiles of %d px, provider %s", model.path, src.path, len(grid), grid.tile, model.provider
    )
    return grid, thresh


def _run_and_write(
    model: OnnxModel,
    src: Source,
    targets: _Targets,
    settings: RasterSettings,
    detect: bool,
    progress: Progress | None,
) -> tuple[Detections, int, int, int]:
    """Tiles → rasters (closed, warped, polygonised) and merged detections (written when requested); returns the
    detections, raw detection count, tile count and tiles run."""
    info = model.info
    grid, thresh = tile_plan(model, src, settings)
    writer = _open_writer(targets, src, info)
    parts, tiles_run = _run_and_close(model, src, grid, settings, writer, (detect, thresh), None, progress)
    _finish_rasters(targets, src, info)
    kept, raw_count = merge_detections(parts, info, src.width, src.height) if detect else (Detections.empty(), 0)
    if "vector" in targets.requested:
        name = targets.requested["vector"]
        out.write_detections(
            targets.final["vector"], kept, info.head("det").classes, src, name, colors=info.head("det").colors
        )
    check_cancel(progress)
    return kept, raw_count, len(grid), tiles_run


def run_prediction(
    model_path: PathLike | OnnxModel,
    input_path: PathLike | WindowReader,
    outputs: dict[str, PathLike],
    settings: RasterSettings,
    *,
    detect: bool | None = None,
    device: str = PredictOptions.device,
    threads: int | None = None,
    progress: Progress | None = None,
) -> Prediction:
    """:func:`predict_raster` with its steps named: open the model and input, open the outputs (``outputs`` keys
    raster, probs, vector, polygons), run the tiles, warp and polygonise, merge detections. ``detect`` (default:
    when a vector output is asked for) also returns the detections without writing them (the region job)."""
    started = time.perf_counter()
    model, notes = _open_model(model_path, device, threads)
    requested = {name: str(p) for name, p in outputs.items() if p is not None}
    detect = "vector" in requested if detect is None else bool(detect)
    _check_request(model, requested, detect)
    src = open_input(model, input_path, settings, notes)
    with bounded_gdal_cache(settings.cache_mb), contextlib.ExitStack() as stack:
        targets = _targets(stack, requested, src.warped)
        kept, raw_count, tiles, tiles_run = _run_and_write(model, src, targets, settings, detect, progress)
    seconds = time.perf_counter() - started
    megapixels = src.width * src.height / 1e6
    if progress is not None:
        progress.report(1.0, "done")
    summary = PredictSummary(
        provider=model.provider,
        tiles=tiles,
        tiles_run=tiles_run,
        seconds=seconds,
        megapixels=megapixels,
        mpx_per_s=megapixels / max(seconds, 1e-9),
        detections=len(kept),
        raw_detections=raw_count,
        warnings=notes,
        outputs=requested,
        model_source=model.info.source,
    )
    return Prediction(summary, kept, src)


def predict_raster(
    model_path: PathLike | OnnxModel,
    input_path: PathLike | WindowReader,
    out_raster: PathLike | None = None,
    out_vector: PathLike | None = None,
    *,
    aoi: PathLike | None = None,
    bands: Sequence[int] | None = None,
    overlap: int | None = None,
    batch_size: int | None = PredictOptions.batch_size,
    out_probs: PathLike | None = None,
    out_polygons: PathLike | None = None,
    device: str = PredictOptions.device,
    threads: int | None = None,
    score_thresh: float | None = None,
    value_max: float | None = None,
    gsd_tolerance: float = 0.25,
    max_gsd_ratio: float = MAX_GSD_RATIO,
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
    an open :class:`OnnxModel` (then ``device`` and ``threads`` are the ones it was opened with). A raster whose
    GSD is more than ``max_gsd_ratio`` times away from the model's is refused.
    """
    with python_api():
        settings = RasterSettings(
            aoi=None if aoi is None else str(aoi),
            bands=None if bands is None else tuple(int(b) for b in bands),
            overlap=overlap,
            batch_size=4 if batch_size is None else int(batch_size),
            score_thresh=score_thresh,
            value_max=value_max,
            gsd_tolerance=gsd_tolerance,
            max_gsd_ratio=max_gsd_ratio,
            cache_mb=cache_mb,
        )
        outputs = {"raster": out_raster, "probs": out_probs, "vector": out_vector, "polygons": out_polygons}
        return run_prediction(
            model_path, input_path, outputs, settings, device=device, threads=threads, progress=progress
        ).summary


@dataclasses.dataclass
class WindowPrediction:
    """One :class:`TileWindow` of a raster: its class-map band was written (working grid, rows ``rows``), its
    detections are per tile, unmerged, in working-grid pixels; ``tiles_run`` tiles ran."""

    detections: Detections
    rows: tuple[int, int]
    tiles_run: int


def predict_window(
    model: OnnxModel,
    input_path: PathLike,
    out_band: PathLike | None,
    settings: RasterSettings,
    window: TileWindow,
    progress: Progress | None = None,
) -> WindowPrediction:
    """Run one window of a raster: ``out_band`` (a GeoTIFF, written under a temporary name) receives the class ids
    of the window's rows on the working grid (no warp: the whole raster is warped once, when its windows are put
    together); detections are returned per tile for the job to merge with the other windows'."""
    notes: list[str] = []
    src = open_input(model, input_path, settings, notes)
    grid, thresh = tile_plan(model, src, settings)
    y0, y1 = window.pixel_rows(grid)
    detect = model.info.det_scores_output is not None
    with bounded_gdal_cache(settings.cache_mb), contextlib.ExitStack() as stack:
        writer = _SegWriter(model.info.seg_kind, None, None, y0)
        if out_band is not None and model.info.seg_output is not None:
            band = Path(stack.enter_context(atomic_path(out_band)))
            gt = src.geotransform
            rows_grid = grid_dataset(
                src.width, y1 - y0, (gt[0], gt[1], gt[2], gt[3] + y0 * gt[5], gt[4], gt[5]), src.wkt
            )
            with out.writing(out_band):
                created = out.create_class_map(
                    band, src, model.info.head("seg").classes, model.info.head("seg").colors, rows_grid
                )
            writer.classes = out.RasterOutput(str(out_band), created)
        parts, tiles_run = _run_and_close(model, src, grid, settings, writer, (detect, thresh), window, progress)
    return WindowPrediction(Detections.concat(parts), (y0, y1), tiles_run)


def _run_and_close(
    model: OnnxModel,
    src: Source,
    grid: TileGrid,
    settings: RasterSettings,
    writer: _SegWriter,
    detection: tuple[bool, float | np.ndarray],
    window: TileWindow | None,
    progress: Progress | None,
) -> tuple[list[Detections], int]:
    """:func:`_run_tiles`, then the raster outputs flushed and closed (a full disk fails here, before any
    rename); on any error they are dropped. ``detection``: (detect, thresholds)."""
    segment = writer if writer.outputs() else None
    try:
        parts, tiles_run = _run_tiles(model, src, grid, int(settings.batch_size), segment, *detection, progress, window)
    except BaseException:
        for output in writer.outputs():
            output.discard()
        raise
    for output in writer.outputs():
        output.close()
    check_cancel(progress)
    return parts, tiles_run
