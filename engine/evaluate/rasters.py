"""Score a model the way a user runs it: whole rasters through ``engine.predict``, against the rasters' own labels.

Chip metrics measure the training pipeline; these measure the product. Each scene (an ortho with its full and
eroded label rasters) is predicted tile by tile with the ONNX model (resampled to the model's GSD and back, as
``engine.predict`` does for any ortho), then segmentation is scored on the eroded labels (ISPRS convention) and
detection against one box per connected blob of a detection class in the full labels (as the chipper makes them).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from osgeo import gdal, ogr

from engine.core.classes import IGNORE_INDEX
from engine.data.boxes import boxes_from_mask
from engine.data.isprs import read_label
from engine.evaluate.detection import DetectionMeter
from engine.evaluate.segmentation import SegmentationMeter
from engine.predict import predict_raster
from engine.predict.model import OnnxModel
from engine.predict.raster import pixel_to_map

SCORE_THRESH = 0.05
"""Detections kept for AP (the evaluation convention of REFERENCE §2, lower than a map's display threshold)."""


@dataclass(frozen=True)
class Scene:
    """One ortho and its label rasters (ISPRS RGB-coded or 1-band class ids); ``eroded`` may be None."""

    image: Path
    label: Path
    eroded: Path | None = None


def _read_class_map(path: Path) -> np.ndarray:
    ds = gdal.OpenEx(str(path), gdal.OF_RASTER | gdal.OF_VERBOSE_ERROR)
    return ds.GetRasterBand(1).ReadAsArray()


def _read_boxes(path: Path, image: Path, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detections of the GeoPackage as pixel boxes (xyxy) of ``image``'s grid, with scores and class ids."""
    inverse = gdal.InvGeoTransform(gdal.OpenEx(str(image), gdal.OF_RASTER).GetGeoTransform())
    envelopes, scores, labels = [], [], []
    source = ogr.Open(str(path))  # kept referenced while its layer is read (GDAL frees the layer with it)
    for feature in source.GetLayer(0):
        envelopes.append(feature.GetGeometryRef().GetEnvelope())  # minx, maxx, miny, maxy
        scores.append(feature.GetField("score"))
        labels.append(list(class_names).index(feature.GetField("class")))
    env = np.asarray(envelopes, np.float64).reshape(-1, 4)
    px, py = pixel_to_map(inverse, env[:, [0, 1]], env[:, [2, 3]])  # the inverse transform: map → pixel
    boxes = np.stack([px.min(1), py.min(1), px.max(1), py.max(1)], axis=1)
    return boxes, np.asarray(scores, np.float64), np.asarray(labels, np.int64)


def score_scenes(
    model_path: Path | str,
    scenes: Sequence[Scene],
    *,
    threads: int | None = None,
    score_thresh: float = SCORE_THRESH,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Predict every scene with the ONNX model and score it; returns ``{"seg": ..., "det": ...}`` meters' metrics.

    A head the model lacks gives no entry. Segmentation: confusion over the model's classes, eroded labels
    (ignore pixels excluded). Detection: all-point AP per class at IoU 0.50:0.95 over all scenes together.
    """
    model = OnnxModel(model_path, threads=threads)
    info = model.info
    seg_classes = info.head("seg").classes
    seg = SegmentationMeter(len(seg_classes), IGNORE_INDEX, seg_classes) if seg_classes else None
    det = DetectionMeter(info.head("det").classes) if info.head("det").classes else None
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="pmtl-score-") as tmp:
        for i, scene in enumerate(scenes):
            classes = Path(tmp) / f"classes_{i}.tif" if seg else None
            dets = Path(tmp) / f"detections_{i}.gpkg" if det else None
            predict_raster(model, scene.image, classes, dets, score_thresh=score_thresh)
            label = read_label(scene.label, boundary_is_ignore=False).mask
            if seg is not None and classes is not None:
                truth = read_label(scene.eroded, boundary_is_ignore=True).mask if scene.eroded else label
                pred = _read_class_map(classes)
                seg.update(pred.astype(np.int64), np.where(pred == 255, IGNORE_INDEX, truth).astype(np.int64))
            if det is not None and dets is not None:
                gt_boxes, gt_labels = boxes_from_mask(label)
                det.update(*_read_boxes(dets, scene.image, info.head("det").classes), gt_boxes, gt_labels)
    out: dict[str, Any] = {}
    if seg is not None:
        out["seg"] = seg.compute()
    if det is not None:
        out["det"] = det.compute()
    return out
