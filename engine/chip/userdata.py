"""Chip the user's own rasters with labels from a polygon layer, a class raster or an ISPRS palette raster.

Two passes. First every image is labelled on its own grid (polygons rasterised with GDAL, boxes from feature
envelopes, class rasters warped with nearest neighbour; AOI outside → ignore) and its candidate chips are found:
chips with image data and, per task, labelled pixels (seg) or lying wholly inside the labelled area (det: objects
outside it are unknown, so such chips would teach misses). Then chips are split by tile or spatial block (see
:mod:`engine.chip.splits`) and the second pass reads each image again and writes the chips. Every input is checked,
and the class table fixed, before the output folder is touched; the writer removes its partial output on error.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.chip import classtable as ct
from engine.chip import sources as src
from engine.chip.splits import SplitPlan, assign_groups, default_val_fraction, drop_overlaps, group_of
from engine.chip.stats import ChipSummary, TileStats
from engine.chip.windows import chip_windows, one_gsd
from engine.core.bands import StatedBands, approx_range, check_band_names, range_warning
from engine.core.classes import IGNORE_INDEX, ISPRS_DET, ISPRS_SEG, ClassTable, head_keys
from engine.core.errors import ConfigError, InputError, param_ref
from engine.core.options import ChipOptions
from engine.core.progress import Progress, check_cancel
from engine.data.boxes import DEFAULT_CONNECTIVITY, DEFAULT_MIN_AREA, BoxParams, boxes_from_masks
from engine.data.chipstore import ARRAY_NAMES, ChipWriter
from engine.data.isprs import read_image, read_label
from engine.data.labels import erode_mask

log = logging.getLogger(__name__)

TASKS = ("det", "seg", "both", "none")
IMAGE_SUFFIXES = (".tif", ".tiff", ".jp2", ".img", ".vrt")
Window = tuple[int, int, int, int]


@dataclass
class LabelSource:
    """Where labels come from and what they label."""

    task: str = "both"
    path: str | None = None
    class_field: str | None = None
    class_name: str | None = None
    classes_file: str | None = None
    aoi: str | None = None


@dataclass
class _Labels:
    """The label source resolved once for all images: its kind, class tables and features."""

    kind: str  # "vector" | "class_raster" | "palette" | "none"
    seg: ClassTable
    det: ClassTable
    vector: src.VectorLabels | None = None
    object_ids: list[int] = field(default_factory=list)
    """Per feature: its index in the detection (object) table."""
    lookup: tuple[np.ndarray, int] | None = None
    """Class raster value → seg class index table and its offset."""
    det_index: np.ndarray | None = None
    """Seg → det class lookup for boxes from blobs (class and palette rasters)."""


@dataclass
class _Image:
    """Pass-one result for one image: its labels on its grid and the chips kept."""

    grid: src.ImageGrid
    name: str
    mask: np.ndarray | None = None
    boxes: np.ndarray | None = None
    box_ids: np.ndarray | None = None
    windows: list[Window] = field(default_factory=list)
    features: int = 0
    """Features (vector) or labelled pixels (rasters) on this image."""
    aoi_pixels: int = 0


def find_images(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image files: the paths given, a folder standing for the rasters directly inside it (sorted)."""
    images: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found = sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise InputError(
                    f"{entry}: expected raster files ({', '.join(IMAGE_SUFFIXES)}) in the folder, found none"
                )
            images.extend(found)
        elif entry.is_file():
            images.append(entry)
        else:
            raise InputError(
                f"{param_ref('image')} {entry}: expected a raster file or a folder of rasters, found nothing there"
            )
    return images


def _check_grids(grids: Sequence[src.ImageGrid], scale_max: float | None) -> tuple[str, float]:
    first = grids[0]
    one_gsd([(str(grid.path), grid.gsd) for grid in grids])  # one dataset, one GSD: checked before cutting
    for grid in grids[1:]:
        if (grid.bands, grid.dtype) != (first.bands, first.dtype):
            raise InputError(
                f"{grid.path}: expected {first.bands} {first.dtype} bands like {first.path}, found "
                f"{grid.bands} {grid.dtype}"
            )
        fix = f"give rasters with their bands in one order (e.g. save {grid.path} with its bands reordered)"
        for warning in check_band_names(
            StatedBands.of(grid.band_names), first.band_names, str(grid.path), f"{first.path} has", fix
        ):
            log.debug(warning)  # unnamed bands: the dataset's names come from the first raster, nothing to add
    if first.dtype in ("uint8", "uint16"):
        top = float(np.iinfo(first.dtype).max)
        if scale_max is not None and not 0 < scale_max <= top:
            raise ConfigError(
                f"{param_ref('scale_max')}: expected a value in (0, {top:g}] for {first.dtype}, found {scale_max}"
            )
        if scale_max is None and first.dtype == "uint16":
            values = approx_range([grid.path for grid in grids])
            warning = range_warning(f"raster '{first.path}'", first.dtype, values, top, "scale_max")
            if warning:
                log.warning(warning)
        return first.dtype, float(scale_max or top)
    if first.dtype in ("float32", "float64", "int16", "int32", "uint32"):
        if scale_max is None or scale_max <= 0:
            raise ConfigError(
                f"{first.path}: {first.dtype} imagery needs {param_ref('scale_max')} (the raw value that maps to "
                "1.0); chips are stored as uint16 of raw / that maximum"
            )
        return "uint16", float(scale_max)
    raise InputError(f"{first.path}: expected uint8, uint16, integer or float imagery, found {first.dtype}")


def _to_stored(image: np.ndarray, dtype: str, scale: float) -> tuple[np.ndarray, float]:
    """Imagery as stored in the chips: uint8/uint16 as read; other types as uint16 of raw / scale (max 65535)."""
    if image.dtype.name == dtype:
        return image, scale
    top = float(np.iinfo(np.uint16).max)
    return np.clip(np.nan_to_num(image.astype(np.float64) / scale) * top, 0, top).round().astype(np.uint16), top


def _resolve_labels(spec: LabelSource) -> _Labels:
    """Read the label source once: kind, class tables (from the class file / field / name) and features."""
    empty = ClassTable((), ())
    if spec.task == "none":
        if spec.path:
            raise ConfigError(
                f"{param_ref('labels')}: imagery-only chips ({param_ref('task')} none) take no labels; leave "
                f"{param_ref('labels')} empty"
            )
        return _Labels("none", empty, empty)
    if not spec.path:
        raise ConfigError(f"{param_ref('labels')}: {param_ref('task')} {spec.task} needs a label layer or class raster")
    records = ct.load_class_file(spec.classes_file) if spec.classes_file else None
    if src.is_vector(spec.path):
        vector = src.read_vector(spec.path, spec.class_field)
        if not len(vector):
            raise InputError(f"{spec.path}: expected polygons, found no usable feature ({vector.skipped} skipped)")
        objects = ct.vector_classes(vector.values if spec.class_field else (), records, spec.class_name, spec.path)
        index = {v: i for i, v in enumerate(objects.values) if v is not None}
        ids = [index[ct.value_key(v)] if spec.class_field else 0 for v in vector.values]
        return _Labels("vector", ct.with_background(objects), objects, vector=vector, object_ids=ids)
    if spec.class_field:
        raise ConfigError(f"{param_ref('class_field')}: {spec.path} is a raster; class fields belong to vector labels")
    header = src.open_raster(spec.path)
    if header.RasterCount == 3 and src.gdal_array_dtype(header.GetRasterBand(1).DataType) == "uint8":
        return _Labels("palette", ISPRS_SEG, ISPRS_DET)  # ISPRS RGB colours, on the image grid
    values, _ = src.class_raster_values(spec.path)
    seg = ct.raster_classes(values.tolist(), records, spec.path)
    det, det_index = ct.detection_subset(seg)
    if spec.task in ("det", "both") and not len(det):
        raise InputError(f"{spec.path}: detection needs object classes, found only {list(seg.names)}")
    return _Labels("class_raster", seg, det, lookup=ct.value_lookup(seg, IGNORE_INDEX), det_index=det_index)


def _aoi_mask(aoi: src.VectorLabels | None, grid: src.ImageGrid) -> np.ndarray | None:
    if aoi is None:
        return None
    geometries, _ = src.on_grid(aoi, grid)
    return src.rasterize(geometries, [1] * len(geometries), grid, 0).astype(bool)


def _label_image(labels: _Labels, spec: LabelSource, image: _Image, aoi: np.ndarray | None) -> np.ndarray | None:
    """Fill ``image.mask`` / ``boxes``; return where detection labels are complete (None: everywhere)."""
    grid = image.grid
    wants_seg = spec.task in ("seg", "both")
    covered = aoi
    if labels.kind == "vector":
        geometries, kept = src.on_grid(labels.vector, grid)
        image.features = len(geometries)
        ids = np.array([labels.object_ids[i] for i in kept], np.int64)
        if spec.task in ("det", "both"):
            image.boxes, image.box_ids = src.pixel_boxes(geometries, grid), ids
        if wants_seg:
            image.mask = src.rasterize(geometries, (ids + 1).tolist(), grid, 0)  # 0 = background
    elif labels.kind == "class_raster":
        values = src.class_raster_on_grid(spec.path, grid)
        lookup, low = labels.lookup
        image.mask = src.map_values(values, lookup, low, IGNORE_INDEX, spec.path)
        image.features = int(np.count_nonzero(image.mask != IGNORE_INDEX))
        covered = image.mask != IGNORE_INDEX if aoi is None else aoi & (image.mask != IGNORE_INDEX)
    elif labels.kind == "palette":
        image.mask = read_label(spec.path, boundary_is_ignore=False).mask
        if image.mask.shape != (grid.height, grid.width):
            raise InputError(f"{spec.path}: expected the size of {grid.path} ({grid.width}×{grid.height} px)")
        image.features = int(np.count_nonzero(image.mask != IGNORE_INDEX))
    if image.mask is not None and aoi is not None:
        image.mask[~aoi] = IGNORE_INDEX
    return covered


def _candidates(
    image: _Image, task: str, has_data: np.ndarray, covered: np.ndarray | None, size: int, stride: int
) -> list[Window]:
    """Windows with image data and, per task, labelled pixels (seg) / wholly inside the labelled area (det)."""
    grid = image.grid
    kept = []
    for x, y, w, h in chip_windows(grid.width, grid.height, size, stride):
        if not has_data[y : y + h, x : x + w].any():
            continue
        if task in ("det", "both") and covered is not None and not covered[y : y + h, x : x + w].all():
            continue
        if task in ("seg", "both") and not (image.mask[y : y + h, x : x + w] != IGNORE_INDEX).any():
            continue
        kept.append((x, y, w, h))
    return kept


def _unique_names(paths: Sequence[Path]) -> list[str]:
    names: list[str] = []
    for path in paths:
        name, n = path.stem, 2
        while name in names:
            name, n = f"{path.stem}_{n}", n + 1
        names.append(name)
    return names


def _first_pass(
    paths: Sequence[Path], labels: _Labels, spec: LabelSource, size: int, stride: int, progress: Progress | None
) -> list[_Image]:
    aoi = src.read_vector(spec.aoi) if spec.aoi else None
    images = []
    for i, (path, name) in enumerate(zip(paths, _unique_names(paths))):
        check_cancel(progress)
        if progress:
            progress.report(0.3 * i / len(paths), f"labelling {name}")
        image = _Image(src.image_grid(path), name)
        aoi_mask = _aoi_mask(aoi, image.grid)
        if aoi_mask is not None:
            image.aoi_pixels = int(aoi_mask.sum())
        covered = _label_image(labels, spec, image, aoi_mask) if labels.kind != "none" else aoi_mask
        if any(v is not None for v in image.grid.nodata):  # only then can a pixel lack data (read the image twice)
            has_data = src.image_valid(read_image(path), image.grid.nodata)
        else:
            has_data = np.ones((image.grid.height, image.grid.width), bool)
        if aoi_mask is not None:
            has_data &= aoi_mask
        if image.mask is not None:
            image.mask[~has_data] = IGNORE_INDEX
        image.windows = _candidates(image, spec.task, has_data, covered, size, stride)
        images.append(image)
    _check_overlap(images, labels, spec)
    return images


def _check_overlap(images: Sequence[_Image], labels: _Labels, spec: LabelSource) -> None:
    if labels.kind != "none" and not any(image.features for image in images):
        names = ", ".join(str(image.grid.path) for image in images[:3])
        kind = "features" if labels.kind == "vector" else "labelled pixels"
        raise InputError(f"{spec.path}: expected labels overlapping the image(s) {names}, found no {kind} there")
    if spec.aoi and not any(image.aoi_pixels for image in images):
        raise InputError(f"{spec.aoi}: expected an area of interest overlapping the image(s), found none")
    if not any(image.windows for image in images):
        what = "with image data" if labels.kind == "none" else "with labelled pixels"
        raise InputError(f"{spec.path or images[0].grid.path}: expected at least one chip {what}, found none")


@dataclass
class _Assigned:
    image: int
    window: Window
    split: str


def _split(images: Sequence[_Image], plan: SplitPlan) -> tuple[list[_Assigned], int]:
    """Every kept chip with its split (image order, then window order); and how many were dropped for overlap."""
    owners = [(i, w) for i, image in enumerate(images) for w in image.windows]
    groups = [group_of(plan, i, w) for i, w in owners]
    by_group = assign_groups(plan, groups)
    splits = [by_group[g] for g in groups]
    keep = drop_overlaps([i for i, _ in owners], np.array([w for _, w in owners], np.int64).reshape(-1, 4), splits)
    chips = [_Assigned(i, w, s) for (i, w), s, k in zip(owners, splits, keep) if k]
    return chips, int((~keep).sum())


def _clip_boxes(boxes: np.ndarray, ids: np.ndarray, window: Window, min_area: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes clipped to a chip window, in chip pixels; boxes left with less than ``min_area`` px² are dropped."""
    x, y, w, h = window
    clipped = boxes - np.array([x, y, x, y], np.float64)
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, w)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, h)
    area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = area >= min_area
    return clipped[keep], ids[keep]


class _Writer:
    """Second pass: reads each image once more and writes its chips with their boxes; collects statistics."""

    def __init__(self, writer: ChipWriter, labels: _Labels, spec: LabelSource, params: BoxParams, scale: float):
        self.writer, self.labels, self.spec, self.params = writer, labels, spec, params
        self.scale = scale
        self.stats = TileStats(writer.bands)
        self.box_counts = np.zeros(max(len(labels.det), 1), np.int64)
        self.next_index = dict.fromkeys(writer.counts, 0)
        self.records: list[dict[str, Any]] = []

    def _boxes(self, image: _Image, windows: Sequence[Window], masks: list[np.ndarray]) -> list[tuple]:
        if self.spec.task not in ("det", "both"):
            return [(np.zeros((0, 4)), np.zeros(0, np.int64))] * len(windows)
        if image.boxes is not None:
            return [_clip_boxes(image.boxes, image.box_ids, w, self.params.min_area) for w in windows]
        size = self.writer.chip_size
        padded = np.full((len(masks), size, size), IGNORE_INDEX, np.uint8)
        for k, m in enumerate(masks):
            padded[k, : m.shape[0], : m.shape[1]] = m
        return boxes_from_masks(padded, self.params, self.labels.det_index)

    def write(self, image: _Image, chips: Sequence[_Assigned], dtype: str) -> None:
        pixels, _ = _to_stored(read_image(image.grid.path), dtype, self.scale)
        wants_seg = self.spec.task in ("seg", "both")
        has_mask = "masks" in self.writer.arrays
        eroded = erode_mask(image.mask) if image.mask is not None and wants_seg else None
        masks = (
            [image.mask[y : y + h, x : x + w] for x, y, w, h in (c.window for c in chips)]
            if image.mask is not None
            else []
        )
        found = self._boxes(image, [c.window for c in chips], masks)
        for k, (chip, (boxes, ids)) in enumerate(zip(chips, found)):
            x, y, w, h = chip.window
            index = self.next_index[chip.split]
            self.next_index[chip.split] += 1
            window_pixels = pixels[y : y + h, x : x + w]
            mask = masks[k] if wants_seg else np.full((h, w), IGNORE_INDEX, np.uint8)
            ero = eroded[y : y + h, x : x + w] if eroded is not None else mask
            self.writer.put(chip.split, index, window_pixels, mask if has_mask else None, ero if has_mask else None)
            if chip.split == "train":
                self.stats.add_image(window_pixels)
                if wants_seg:
                    self.stats.add_mask(mask)
            ids = np.asarray(ids, np.int64)
            if len(ids):
                self.box_counts += np.bincount(ids, minlength=len(self.box_counts))
            named = [[*(round(float(v), 3) for v in b), self.labels.det.names[c]] for b, c in zip(boxes, ids)]
            record = {"split": chip.split, "index": index, "tile": image.name, "window": [x, y, w, h]}
            self.records.append({**record, "boxes": named})


@dataclass
class _Run:
    """What a chipping run was given and resolved (for the manifest)."""

    dataset: str
    spec: LabelSource
    labels: _Labels
    grids: Sequence[src.ImageGrid]
    images: Sequence[_Image]
    plan: SplitPlan
    params: BoxParams
    size: int
    stride: int


def _class_keys(labels: _Labels, task: str) -> dict[str, Any]:
    seg = labels.seg if task in ("seg", "both") else ClassTable((), ())
    det = labels.det if task in ("det", "both") else ClassTable((), ())
    return {
        **head_keys("seg", seg.names, seg.colors),
        **head_keys("det", det.names, det.colors),
        "class_tables": {"seg": seg.to_records(), "det": det.to_records()},
    }


def chip_images(
    images: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    labels: LabelSource,
    *,
    size: int = ChipOptions.size,
    stride: int = ChipOptions.stride,
    plan: SplitPlan | None = None,
    dataset: str = "custom",
    scale_max: float | None = None,
    connectivity: int = DEFAULT_CONNECTIVITY,
    min_area: int = DEFAULT_MIN_AREA,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ChipSummary:
    """Chip ``images`` (files or folders of rasters) labelled by ``labels`` into a chip dataset in ``out_dir``.

    ``labels.task``: det, seg, both, or none (imagery only: images array only, no boxes). ``plan``: the split
    (default: blocks of twice the chip size, seed 0, :func:`~engine.chip.splits.default_val_fraction` held out for
    validation: 20 %, none for imagery only). Boxes smaller than ``min_area`` px² after
    clipping at the chip border are dropped (``connectivity`` joins class-raster blobs).
    """
    start = time.perf_counter()
    if labels.task not in TASKS:
        raise ConfigError(f"{param_ref('task')}: expected one of {list(TASKS)}, found {labels.task!r}")
    if size < 1 or stride < 1:
        raise ConfigError(
            f"{param_ref('size')}/{param_ref('stride')}: expected positive integers, found {size} and {stride}"
        )
    plan = plan or SplitPlan(val=default_val_fraction(labels.task), block=2 * size)
    params = BoxParams(connectivity, min_area)
    paths = find_images(images)
    grids = [src.image_grid(p) for p in paths]
    dtype, scale = _check_grids(grids, scale_max)
    resolved = _resolve_labels(labels)
    found = _first_pass(paths, resolved, labels, size, stride, progress)
    chips, dropped = _split(found, plan)
    counts: dict[str, int] = {}
    for chip in chips:
        counts[chip.split] = counts.get(chip.split, 0) + 1
    arrays = ("images",) if labels.task == "none" else ARRAY_NAMES
    with ChipWriter(out_dir, counts, size, grids[0].bands, dtype, overwrite, arrays=arrays) as writer:
        cutter = _Writer(writer, resolved, labels, params, scale)
        for i, image in enumerate(found):
            check_cancel(progress)
            if progress:
                progress.report(0.3 + 0.69 * i / len(found), f"chipping {image.name}")
            mine = [c for c in chips if c.image == i]
            if mine:
                cutter.write(image, mine, dtype)
        stored_scale = scale if dtype == grids[0].dtype else float(np.iinfo(np.uint16).max)
        mean, std = cutter.stats.mean_std(stored_scale)
        classes = _class_keys(resolved, labels.task)
        summary = ChipSummary(
            out_dir=str(Path(out_dir)),
            chips_per_split=dict(counts),
            boxes_per_class={n: int(c) for n, c in zip(classes["det_classes"], cutter.box_counts)},
            class_pixel_shares=cutter.stats.class_shares(classes["seg_classes"]) if classes["seg_classes"] else {},
            value_scaling={"dtype": dtype, "max": stored_scale},
            mean=mean,
            std=std,
            megapixels=sum(g.width * g.height for g in grids) / 1e6,
        )
        run = _Run(dataset, labels, resolved, grids, found, plan, params, size, stride)
        writer.commit(_manifest(run, summary, cutter.records, counts, dropped))
    summary.seconds = time.perf_counter() - start
    if progress:
        progress.report(1.0, "done")
    return summary


def _manifest(
    run: _Run, summary: ChipSummary, records: list[dict[str, Any]], counts: dict[str, int], dropped: int
) -> dict[str, Any]:
    spec, labels, first, vector = run.spec, run.labels, run.grids[0], run.labels.vector
    return {
        "dataset": run.dataset,
        "task": spec.task,
        "bands": list(first.band_names),
        **_class_keys(labels, spec.task),
        "ignore_index": IGNORE_INDEX,
        "chip_size": run.size,
        "stride": run.stride,
        "labels": {
            "source": spec.path,
            "kind": labels.kind,
            "class_field": spec.class_field,
            "aoi": spec.aoi,
            "repaired_geometries": vector.repaired if vector else 0,
            "skipped_geometries": vector.skipped if vector else 0,
        },
        "split": {**run.plan.as_dict(), "dropped_overlapping_chips": dropped},
        "gsd": one_gsd([(str(grid.path), grid.gsd) for grid in run.grids]),
        "value_scaling": summary.value_scaling,
        "mean": summary.mean,
        "std": summary.std,
        "stats_split": "train",
        "box_params": run.params.as_dict(),
        "tiles": {
            image.name: {
                "crs": image.grid.wkt,
                "geotransform": list(image.grid.geotransform),
                "width": image.grid.width,
                "height": image.grid.height,
                "image": str(image.grid.path),
                "label": spec.path,
            }
            for image in run.images
        },
        "splits": dict(counts),
        "summary": {"boxes_per_class": summary.boxes_per_class, "class_pixel_shares": summary.class_pixel_shares},
        "chips": records,
    }
