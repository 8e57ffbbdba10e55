"""Score exported ONNX models (any precision) on chip datasets with the meters checkpoint evaluation uses.

Chips go through the model as inference feeds tiles: bands in the model's order, raw / value max, standardised
with the mean/std in the model's metadata. Detection chips: one per tile, zero-padded (= the mean colour) right and
bottom up to the model's fixed tile size. Segmentation chips: packed k×k per tile (k = tile // chip, the rest
padded; k = 1 when the model was exported at the chip size), so the network sees ortho-like context. Outputs are
cropped back to each chip. Detections: every anchor×class above
``score_thresh``, boxes clipped to the chip, per-class NMS (``engine.predict.detections.tile_detections``, the numpy
mirror of ``postprocess_detections``). Segmentation: argmax of the logits against the eroded masks.

:func:`compare_onnx` runs several models on the same batches (e.g. fp32 and int8): their metrics and the share of
chip pixels where the first two models' class maps agree.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.core.errors import ConfigError, InputError, param_ref
from engine.core.modelio import ModelInfo
from engine.core.progress import Progress, check_cancel

if TYPE_CHECKING:
    from engine.predict.model import OnnxModel

    ModelLike = str | os.PathLike[str] | OnnxModel


def band_order(dataset_bands: Sequence[str], info: ModelInfo, where: str) -> list[int]:
    """Indices into the chips' bands giving the model's band order, as training fed them: the same names permuted
    are reordered, otherwise bands go in their order (a partial-MTL model's segmentation head learned NIR-R-G
    chips in the input slots its metadata calls R-G-B); a different band count is an InputError."""
    if len(dataset_bands) != info.channels:
        wanted = list(info.bands) if info.bands else f"{info.channels} bands"
        raise InputError(
            f"{where}: the model expects {wanted}, the chips have {len(dataset_bands)} bands {list(dataset_bands)}"
        )
    names = list(dataset_bands)
    if info.bands is not None and sorted(names) == sorted(info.bands) and len(set(names)) == len(names):
        return [names.index(b) for b in info.bands]
    return list(range(info.channels))


def chips_to_tiles(images: np.ndarray, info: ModelInfo, bands: Sequence[int]) -> np.ndarray:
    """(N, H, W, C) raw chips → (N, C, T, T) float32 graph input (model band order, scaled, standardised, padded)."""
    n, h, w, _ = images.shape
    tile = info.tile_size
    if h > tile or w > tile:
        raise InputError(
            f"chips of {h}×{w} px do not fit the model's {tile} px tiles; export with {param_ref('tile_size')} >= {h}"
        )
    mean = np.asarray(info.mean, np.float32)[:, None, None]
    std = np.asarray(info.std, np.float32)[:, None, None]
    value_max = info.value_max_for(np.asarray(images).dtype.name) or info.value_max  # as predict scales it
    x = np.asarray(images, np.float32)[..., list(bands)].transpose(0, 3, 1, 2) / np.float32(value_max)
    out = np.zeros((n, len(bands), tile, tile), np.float32)
    out[:, :, :h, :w] = (x - mean) / std
    return out


def chips_per_tile(chip: int, info: ModelInfo) -> int:
    """How many chips a side fit into one model tile (at least 1)."""
    return max(1, info.tile_size // chip)


def mosaic_chips(
    images: np.ndarray, info: ModelInfo, bands: Sequence[int]
) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """(N, H, W, C) raw chips packed k×k per model tile in row-major order (k = tile // chip; the rest zero-padded):
    the tiles (M, C, T, T) and each chip's (tile index, y, x). Consecutive chips of a tile are usually neighbours on
    the ground, so a mosaic shows the network ortho-like context instead of a chip alone in a mostly empty tile
    (whose class maps are far less certain than on a real ortho)."""
    n, h, w, _ = images.shape
    side = chips_per_tile(max(h, w), info)
    per_tile = side * side
    singles = chips_to_tiles(images, info, bands)
    tiles = np.zeros((-(-n // per_tile), len(bands), info.tile_size, info.tile_size), np.float32)
    slots = []
    for k in range(n):
        t, r = divmod(k, per_tile)
        y, x = (r // side) * h, (r % side) * w
        tiles[t, :, y : y + h, x : x + w] = singles[k, :, :h, :w]
        slots.append((t, y, x))
    return tiles, slots


def open_model(model: ModelLike, threads: int | None = None, device: str = "cpu") -> OnnxModel:
    """An :class:`engine.predict.model.OnnxModel` (``model`` itself when it is one already)."""
    from engine.predict.model import OnnxModel

    return model if isinstance(model, OnnxModel) else OnnxModel(model, device=device, threads=threads)


def _open_chips(root: str | os.PathLike[str], split: str, flag: str) -> Any:
    from engine.data.chipstore import open_chip_dataset

    store = open_chip_dataset(root)
    if split not in store.splits:
        raise InputError(f"{flag} {root}: expected a split {split!r}, found splits {sorted(store.splits)}")
    return store


def _check_model(model: Any, task: str, store: Any, flag: str) -> list[int]:
    info = model.info
    if task == "det" and info.det_scores_output is None:
        raise ConfigError(f"{flag} {store.root}: model '{model.path}' has no detection outputs")
    if task == "seg" and info.seg_output is None:
        raise ConfigError(f"{flag} {store.root}: model '{model.path}' has no segmentation output")
    names = store.det_classes if task == "det" else store.seg_classes
    model_names = info.head("det").classes if task == "det" else info.head("seg").classes
    if len(names) != len(model_names):
        raise InputError(
            f"{flag} {store.root}: chips have {len(names)} classes {names}, model '{model.path}' predicts "
            f"{len(model_names)} {list(model_names)}"
        )
    return band_order(store.bands, info, f"{flag} {store.root}")


def _batches(count: int, batch_size: int) -> Iterator[range]:
    for start in range(0, count, batch_size):
        yield range(start, min(start + batch_size, count))


def _meter(task: str, store: Any) -> Any:
    from engine.evaluate.detection import DetectionMeter
    from engine.evaluate.segmentation import SegmentationMeter

    if task == "det":
        return DetectionMeter(store.det_classes)
    return SegmentationMeter(len(store.seg_classes), ignore_index=store.ignore_index, class_names=store.seg_classes)


def _update_det(meter: Any, outputs: Any, rows: range, truth: list, size: int, thr: float, iou: float) -> None:
    """Per chip: anchor×class candidates above ``thr``, clipped to the chip, NMS; into the meter."""
    from engine.predict.detections import tile_detections

    for k, row in enumerate(rows):
        boxes, scores, labels = tile_detections(outputs.scores[k], outputs.boxes[k], thr, iou, size)
        meter.update(boxes, scores, labels, *truth[row])


def _mosaic_classes(model: Any, raw: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """Class ids (N, H, W) of raw chips run as a mosaic (see :func:`mosaic_chips`)."""
    h, w = raw.shape[1:3]
    tiles, slots = mosaic_chips(raw, model.info, order)
    seg = model.run(tiles).seg
    return np.stack([seg[t, :, y : y + h, x : x + w].argmax(axis=0) for t, y, x in slots]).astype(np.int64)


def _score_task(
    task: str,
    models: Sequence[Any],
    root: str | os.PathLike[str],
    split: str,
    batch_size: int,
    max_chips: int | None,
    score_thresh: float,
    nms_iou: float,
    progress: tuple[Progress | None, float, float],
) -> tuple[list[dict[str, Any]], tuple[int, int]]:
    """Metrics of every model on one chip set, plus (agreeing, total) chip pixels of models 0 and 1 (seg only)."""
    flag = param_ref("det_chips") if task == "det" else param_ref("seg_chips")
    store = _open_chips(root, split, flag)
    orders = [_check_model(m, task, store, flag) for m in models]
    images = store.images(split)
    count = len(images) if max_chips is None else min(int(max_chips), len(images))
    truth = store.boxes(split) if task == "det" else None
    eroded = store.eroded(split) if task == "seg" else None
    meters = [_meter(task, store) for _ in models]
    agree = total = 0
    bar, start, span = progress
    chunk = batch_size if task == "det" else batch_size * chips_per_tile(store.chip_size, models[0].info) ** 2
    for rows in _batches(count, chunk):
        check_cancel(bar)
        raw = np.asarray(images[rows.start : rows.stop])
        maps = []
        for model, order, meter in zip(models, orders, meters):
            if task == "det":  # one chip per tile: a box must not straddle two chips
                outputs = model.run(chips_to_tiles(raw, model.info, order))
                _update_det(meter, outputs, rows, truth, store.chip_size, score_thresh, nms_iou)
            else:
                classes = _mosaic_classes(model, raw, order)
                meter.update(classes, np.asarray(eroded[rows.start : rows.stop]).astype(np.int64))
                maps.append(classes)
        if len(maps) > 1:
            agree += int((maps[0] == maps[1]).sum())
            total += maps[0].size
        if bar is not None:
            bar.report(start + span * rows.stop / max(count, 1), f"evaluating {task} ({rows.stop}/{count} chips)")
    return [meter.compute() for meter in meters], (agree, total)


def _flat(task: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """The same layout as :func:`engine.evaluate.run.evaluate_model`: nested under the task, scalars flattened."""
    flat: dict[str, Any] = {task: metrics}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{task}_{key}"] = float(value)
    return flat


def compare_onnx(
    models: Sequence[ModelLike],
    det_root: str | os.PathLike[str] | None = None,
    seg_root: str | os.PathLike[str] | None = None,
    split: str = "val",
    *,
    batch_size: int = 4,
    max_chips: int | None = None,
    score_thresh: float = 0.05,
    nms_iou: float = 0.5,
    threads: int | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
) -> tuple[list[dict[str, Any]], float | None]:
    """Metrics of each model (``det_map``, ``det_ap50``, ``seg_miou``, … as ``evaluate_model`` gives) on the same
    chips, and the share of segmentation-chip pixels where the class maps of the first two models agree (None with
    one model or no segmentation chips)."""
    if not models:
        raise ConfigError("compare_onnx: expected at least one model")
    if det_root is None and seg_root is None:
        raise ConfigError("give at least one chip dataset to evaluate on: det_root and/or seg_root")
    if batch_size < 1 or (max_chips is not None and max_chips < 1):
        raise ConfigError(f"expected batch_size >= 1 and max_chips >= 1, found {batch_size}, {max_chips}")
    opened = [open_model(m, threads, device) for m in models]
    results: list[dict[str, Any]] = [{} for _ in opened]
    jobs = [(task, root) for task, root in (("det", det_root), ("seg", seg_root)) if root is not None]
    agreement = None
    for k, (task, root) in enumerate(jobs):
        span = (progress, k / len(jobs), 1.0 / len(jobs))
        metrics, (agree, total) = _score_task(
            task, opened, root, split, batch_size, max_chips, score_thresh, nms_iou, span
        )
        for result, m in zip(results, metrics):
            result.update(_flat(task, m))
        if total:
            agreement = agree / total
    return results, agreement


def evaluate_onnx(
    model_path: ModelLike,
    det_root: str | os.PathLike[str] | None = None,
    seg_root: str | os.PathLike[str] | None = None,
    split: str = "val",
    **options: Any,
) -> dict[str, Any]:
    """Metrics of one exported model on ``split`` of the chip datasets given (detection on ``det_root``,
    segmentation on ``seg_root``); ``options`` as :func:`compare_onnx`. Same keys as ``evaluate_model``."""
    results, _ = compare_onnx([model_path], det_root, seg_root, split, **options)
    return results[0]
