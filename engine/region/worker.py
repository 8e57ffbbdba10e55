"""One raster of a region job, as a Dask task: ``predict_one(RasterJob)`` runs ``engine.predict``'s steps with the
worker's one onnxruntime session and writes the raster's outputs into the job's folder (a shared filesystem):

- ``classes/<stem>.tif``: the class map as a Cloud-Optimised GeoTIFF on the input's own grid;
- ``parts/<stem>.npz``: the raster's merged detections in map coordinates of its working CRS, with the raster
  borders each box touches (the client joins objects cut by the border between two adjacent inputs).

Both are written under temporary names and renamed when complete. The task never raises for a bad raster: it
returns ``status: failed`` with the one-line error, so one corrupt file fails alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import io
import math
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np
from osgeo import gdal

from engine.core.atomic import atomic_path, temporary_sibling
from engine.core.errors import PmtlError
from engine.core.progress import Cancelled, check_cancel
from engine.predict import outputs as out
from engine.predict.detections import BOTTOM, LEFT, RIGHT, TOP, Detections, truncated_at_seams
from engine.predict.model import OnnxModel
from engine.predict.pipeline import (
    Prediction,
    RasterSettings,
    TileWindow,
    bounded_gdal_cache,
    merge_detections,
    open_input,
    predict_window,
    run_prediction,
)
from engine.predict.raster import OutsideAoi, Source, pixel_to_map

gdal.UseExceptions()

PROGRESS_INTERVAL_S: float = 0.5
"""How often a task reports its progress to the client and looks for the job's cancel flag."""

_COG_OPTIONS = ["COMPRESS=DEFLATE", "BLOCKSIZE=512", "OVERVIEWS=AUTO", "RESAMPLING=NEAREST", "BIGTIFF=IF_SAFER"]


@dataclasses.dataclass(frozen=True)
class RasterJob:
    """What one task needs: the model, one input and its output stem, the job's folder and per-raster options."""

    model: str
    source: str
    stem: str
    out_dir: str
    settings: RasterSettings
    device: str = "auto"
    threads: int | None = None
    job_id: str = ""


def class_map_path(out_dir: str | os.PathLike[str], stem: str) -> Path:
    return Path(out_dir) / "classes" / f"{stem}.tif"


def parts_path(out_dir: str | os.PathLike[str], stem: str) -> Path:
    return Path(out_dir) / "parts" / f"{stem}.npz"


def cancel_flag(out_dir: str | os.PathLike[str], job_id: str) -> Path:
    """The file whose presence asks every task of job ``job_id`` to stop (outputs are on a shared folder anyway)."""
    return Path(out_dir) / f".cancel-{job_id}"


def progress_topic(job_id: str) -> str:
    return f"pmtl-region-{job_id}"


_MODELS: dict[tuple[str, str, int | None], OnnxModel] = {}
_MODELS_LOCK = threading.Lock()


def worker_model(path: str, device: str, threads: int | None) -> OnnxModel:
    """The worker process's onnxruntime session for ``path``: loaded once, shared by every task it runs."""
    key = (str(path), device, threads)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = OnnxModel(path, device=device, threads=threads, memory_arena=False)
        return _MODELS[key]


def release_freed_memory() -> None:
    """Give memory freed by a finished task back to the OS (glibc keeps it otherwise, and the next raster's peak
    stacks on it: measured +80 MB per worker from the second raster on). A no-op outside glibc."""
    gc.collect()
    if platform.system() != "Linux":
        return
    with contextlib.suppress(OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class TaskProgress:
    """A task's progress: sent to the client as an event on the job's topic, at most every
    :data:`PROGRESS_INTERVAL_S`; cancelled once the job's cancel flag exists. A window task is ``part`` of
    ``parts`` of its raster."""

    def __init__(self, job: RasterJob, part: int = 0, parts: int = 1) -> None:
        self.job, self.part, self.parts = job, part, parts
        self._flag = cancel_flag(job.out_dir, job.job_id)
        self._sent = self._checked = -math.inf
        self._cancelled = False

    def report(self, fraction: float | None, message: str = "") -> None:
        now = time.monotonic()
        if fraction is not None and fraction < 1.0 and now - self._sent < PROGRESS_INTERVAL_S:
            return
        self._sent = now
        message = {"stem": self.job.stem, "part": self.part, "parts": self.parts, "fraction": fraction}
        send_event(progress_topic(self.job.job_id), message)

    def is_canceled(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now - self._checked >= PROGRESS_INTERVAL_S:
            self._checked = now
            self._cancelled = self._flag.exists()
        return self._cancelled


def send_event(topic: str, message: dict) -> None:
    """Log ``message`` on the scheduler's ``topic`` (the client subscribes); nothing outside a Dask worker."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return
    worker.log_event(topic, message)


def raster_edges(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bit mask (LEFT, TOP, RIGHT, BOTTOM of ``engine.predict.detections``) of the raster borders each box touches."""
    across = truncated_at_seams(boxes, width, True, True, False, False)
    down = truncated_at_seams(boxes, height, False, False, True, True)
    return (across & (LEFT | RIGHT)) | (down & (TOP | BOTTOM))


def _map_boxes(source: Source, boxes: np.ndarray) -> np.ndarray:
    """Pixel boxes of the working grid → (N, 4) map boxes (min x, min y, max x, max y) in its CRS."""
    gt = source.geotransform
    xs = np.stack([boxes[:, 0], boxes[:, 2], boxes[:, 2], boxes[:, 0]], axis=1).astype(np.float64)
    ys = np.stack([boxes[:, 1], boxes[:, 1], boxes[:, 3], boxes[:, 3]], axis=1).astype(np.float64)
    mx, my = pixel_to_map(gt, xs, ys)
    return np.stack([mx.min(axis=1), my.min(axis=1), mx.max(axis=1), my.max(axis=1)], axis=1)


def save_parts(path: Path, src: Source, dets: Detections) -> None:
    """The raster's detections and working grid as ``.npz`` (plain arrays, read back without pickle)."""
    corners = _map_boxes(src, np.array([[0, 0, src.width, src.height]], np.float64))[0]
    gt = src.geotransform
    buffer = io.BytesIO()
    np.savez(
        buffer,
        boxes=_map_boxes(src, dets.boxes),
        scores=dets.scores.astype(np.float32),
        labels=dets.labels.astype(np.int64),
        edges=raster_edges(dets.boxes, src.width, src.height),
        extent=corners,
        gsd=np.float64(math.sqrt(abs(gt[1] * gt[5] - gt[2] * gt[4]))),
        wkt=np.str_(src.wkt),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def write_cog(work: Path, final: Path) -> None:
    """The class map as a Cloud-Optimised GeoTIFF (overviews by nearest class), under a temporary name first."""
    with atomic_path(final) as tmp, out.writing(final):
        gdal.Translate(str(tmp), str(work), format="COG", creationOptions=_COG_OPTIONS)


def _predict(job: RasterJob, model: OnnxModel, progress: TaskProgress) -> Prediction:
    final = class_map_path(job.out_dir, job.stem)
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = temporary_sibling(final, ".tif")
    segment = model.info.seg_output is not None
    try:
        outputs = {"raster": scratch} if segment else {}
        detect = model.info.det_scores_output is not None
        prediction = run_prediction(model, job.source, outputs, job.settings, detect=detect, progress=progress)
        if segment:
            with bounded_gdal_cache(job.settings.cache_mb):  # the COG's overviews too: memory bounded per worker
                write_cog(scratch, final)
        save_parts(parts_path(job.out_dir, job.stem), prediction.source, prediction.detections)
        return prediction
    finally:
        scratch.unlink(missing_ok=True)


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (Linux VmHWM), or None where /proc is missing."""
    try:
        status = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[1]) / 1024.0 for line in status if line.startswith("VmHWM:")), None)


def _base_record(job: RasterJob) -> dict:
    return {"input": job.source, "stem": job.stem, "host": platform.node(), "pid": os.getpid()}


def _not_done(record: dict, exc: BaseException, started: float) -> dict:
    """The record of a task that stopped: cancelled, or failed with the error's first line."""
    seconds = time.perf_counter() - started
    if isinstance(exc, Cancelled):
        return {**record, "status": "cancelled", "seconds": seconds}
    if isinstance(exc, OutsideAoi):  # the region's AOI covers other rasters: nothing to do here
        return {**record, "status": "outside_aoi", "seconds": seconds}
    error = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return {**record, "status": "failed", "error": error, "seconds": seconds}


def predict_one(job: RasterJob) -> dict:
    """Run one raster; returns its record for ``region.json`` (status done / failed / cancelled)."""
    started = time.perf_counter()
    record = _base_record(job)
    try:
        model = worker_model(job.model, job.device, job.threads)
        summary = _predict(job, model, TaskProgress(job)).summary
    except (Cancelled, PmtlError, OSError) as exc:
        return _not_done(record, exc, started)
    finally:
        release_freed_memory()
    return {
        **record,
        "status": "done",
        "seconds": time.perf_counter() - started,
        "predict_seconds": summary.seconds,
        "megapixels": summary.megapixels,
        "tiles": summary.tiles,
        "detections": summary.detections,
        "warnings": summary.warnings,
        "provider": summary.provider,
        "worker_peak_rss_mb": peak_rss_mb(),
    }


def window_path(out_dir: str | os.PathLike[str], stem: str, index: int) -> Path:
    return Path(out_dir) / "windows" / f"{stem}.{index:04d}.tif"


def predict_window_task(job: RasterJob, index: int, window: TileWindow, parts: int) -> dict:
    """One window of a raster too big for one task: its class-map band (``windows/``) and per-tile detections."""
    started = time.perf_counter()
    record = {**_base_record(job), "window": index}
    progress = TaskProgress(job, index, parts)
    try:
        check_cancel(progress)
        model = worker_model(job.model, job.device, job.threads)
        done = predict_window(
            model, job.source, window_path(job.out_dir, job.stem, index), job.settings, window, progress
        )
    except (Cancelled, PmtlError, OSError) as exc:
        return _not_done(record, exc, started)
    finally:
        release_freed_memory()
    seconds = time.perf_counter() - started
    return {**record, "status": "done", "seconds": seconds, "tiles": done.tiles_run, "detections": done.detections}


def _assemble_class_map(job: RasterJob, src: Source, bands: list[Path]) -> None:
    """Bands (working grid) → one VRT → warped onto the input grid when it differs → the COG."""
    final = class_map_path(job.out_dir, job.stem)
    mosaic, warped = temporary_sibling(final, ".vrt"), temporary_sibling(final, ".tif")
    try:
        with out.writing(final):
            gdal.BuildVRT(str(mosaic), [str(b) for b in bands]).FlushCache()
        if src.warped:
            out.warp_to_input(mosaic, warped, src, "near", str(final))
        write_cog(warped if src.warped else mosaic, final)
    finally:
        mosaic.unlink(missing_ok=True)
        warped.unlink(missing_ok=True)


def assemble_raster(job: RasterJob, *windows: dict) -> dict:
    """After a raster's windows: its class map put together as a COG, its detections merged across windows."""
    started = time.perf_counter()
    record = _base_record(job)
    stopped = [w for w in windows if w["status"] != "done"]
    bands = [window_path(job.out_dir, job.stem, w["window"]) for w in windows]
    try:
        if stopped:
            return {**record, **{k: stopped[0][k] for k in ("status", "error") if k in stopped[0]}}
        model = worker_model(job.model, job.device, job.threads)
        check_cancel(TaskProgress(job))
        src = open_input(model, job.source, job.settings, [])
        if model.info.seg_output is not None:
            with bounded_gdal_cache(job.settings.cache_mb):
                _assemble_class_map(job, src, bands)
        kept, _ = merge_detections([w["detections"] for w in windows], model.info, src.width, src.height)
        save_parts(parts_path(job.out_dir, job.stem), src, kept)
    except (Cancelled, PmtlError, OSError) as exc:
        return _not_done(record, exc, started)
    finally:
        for band in bands:
            band.unlink(missing_ok=True)
        release_freed_memory()
    return {
        **record,
        "status": "done",
        "seconds": time.perf_counter() - started + sum(w["seconds"] for w in windows),
        "windows": len(windows),
        "tiles": sum(w["tiles"] for w in windows),
        "detections": len(kept),
        "worker_peak_rss_mb": peak_rss_mb(),
    }
