"""Cut georeferenced tiles into a chip dataset (docs/ARCHITECTURE.md "Chip dataset format").

Every tile is checked (header only) before anything is written, then read whole, once: imagery with one
pixel-interleaved GDAL read, labels decoded through a lookup table, in background threads that read the next
tile while this one is cut. Chips are written into arrays preallocated on disk; boxes come from each chip's own
mask (a batch of chips per call); band statistics and class shares from the tiles' pixels.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from osgeo import gdal

from engine.chip.stats import ChipSummary, TileStats
from engine.chip.windows import chip_windows, one_gsd
from engine.core.bands import approx_range, check_band_names, listed, range_warning, raster_band_names
from engine.core.classes import DET_CLASSES, IGNORE_INDEX, ISPRS_DET_PALETTE, PALETTE, SEG_CLASSES, head_keys
from engine.core.errors import ConfigError, InputError, param_ref
from engine.core.options import ChipOptions
from engine.core.progress import Progress, check_cancel
from engine.data.boxes import DEFAULT_CONNECTIVITY, DEFAULT_MIN_AREA, BoxParams, boxes_from_masks
from engine.data.chipstore import ChipWriter
from engine.data.isprs import (
    BAND_NAMES,
    RasterInfo,
    TileSpec,
    check_split_name,
    check_tile,
    find_isprs_tiles,
    read_image,
    read_label,
)
from engine.data.isprs import resolve_bands as _resolve_bands
from engine.data.labels import DecodedLabel, erode_mask

log = logging.getLogger(__name__)
Window = tuple[int, int, int, int]
_BATCH = 64
"""Chips whose boxes are found in one graph (and between two cancel checks)."""


@dataclass
class _LoadedTile:
    image: np.ndarray
    mask: np.ndarray
    eroded: np.ndarray
    off_palette: dict[str, int]


def _erode_when_ready(label: Future[DecodedLabel]) -> DecodedLabel:
    return DecodedLabel(erode_mask(label.result().mask))


class _TileLoad:
    """A tile being read: image, label and eroded label in parallel threads (GDAL and numpy release the GIL).

    At most one tile is in flight (three tasks for a pool of three), so waiting on the label to erode it cannot
    starve the pool.
    """

    def __init__(self, pool: ThreadPoolExecutor, tile: TileSpec) -> None:
        self.tile = tile
        self.image = pool.submit(read_image, tile.image)
        self.label = pool.submit(read_label, tile.label, boundary_is_ignore=False)
        if tile.eroded is not None:
            self.eroded = pool.submit(read_label, tile.eroded, boundary_is_ignore=True)
        else:
            self.eroded = pool.submit(_erode_when_ready, self.label)

    def result(self) -> _LoadedTile:
        image, label, eroded = self.image.result(), self.label.result(), self.eroded.result()
        decoded = ((self.tile.label, label), (self.tile.eroded, eroded))
        off_palette = {str(path): d.off_palette_pixels for path, d in decoded if d.off_palette_pixels}
        return _LoadedTile(image, label.mask, eroded.mask, off_palette)

    def cancel(self) -> None:
        for future in (self.eroded, self.label, self.image):
            future.cancel()


def _resolve_scaling(infos: Sequence[RasterInfo], scale_max: float | None) -> tuple[str, float]:
    dtype = infos[0].dtype
    for info in infos:
        if info.dtype != dtype:
            raise InputError(f"{info.path}: expected {dtype} imagery like {infos[0].path}, found {info.dtype}")
        if info.bands != infos[0].bands:
            raise InputError(f"{info.path}: expected {infos[0].bands} bands like {infos[0].path}, found {info.bands}")
    top = float(np.iinfo(dtype).max)
    if scale_max is None:
        if dtype != "uint8":
            where = f"raster '{infos[0].path}'" + (f" and {len(infos) - 1} more" if len(infos) > 1 else "")
            warning = range_warning(where, dtype, approx_range([info.path for info in infos]), top, "scale_max")
            if warning:
                log.warning(warning)
        return dtype, top
    if not 0 < scale_max <= top:
        raise ConfigError(f"scale_max: expected a value in (0, {top:g}] for {dtype} imagery, found {scale_max!r}")
    return dtype, float(scale_max)


def _band_names(info: RasterInfo, given: Sequence[str] | None) -> list[str]:
    """The dataset's band names: as given (checked against the names the first raster states), else the raster's own
    names when it names every band (descriptions, colour interpretation), else band1..bandN."""
    stated = raster_band_names(gdal.Open(str(info.path)))
    if not given:
        return [str(n) for n in stated.names] if all(stated.described) else [f"band{i + 1}" for i in range(info.bands)]
    if len(given) != info.bands:
        raise ConfigError(f"{param_ref('band_names')}: expected {info.bands} names for {info.path}, found {given}")
    fix = (
        f"give the raster's band names in its order in {param_ref('band_names')}, e.g. {','.join(listed(stated.names))}"
    )
    for warning in check_band_names(stated, given, f"raster '{info.path}'", "the band names given are", fix):
        log.warning(warning)
    return list(given)


def _tile_record(tile: TileSpec, info: RasterInfo) -> dict[str, Any]:
    return {
        "crs": info.crs_wkt,
        "geotransform": list(info.geotransform) if info.geotransform else None,
        "width": info.width,
        "height": info.height,
        "split": tile.split,
        "image": str(tile.image),
        "label": str(tile.label),
        "eroded": str(tile.eroded) if tile.eroded else None,
    }


def _check_tiles(
    tiles: Sequence[TileSpec], size: int, stride: int, progress: Progress | None
) -> tuple[list[RasterInfo], list[list[Window]]]:
    """Header checks of every tile (before anything is written) and each tile's chip windows."""
    if size < 1 or stride < 1:
        raise ConfigError(f"size/stride: expected positive integers, found size={size}, stride={stride}")
    if not tiles:
        raise InputError("tiles: expected at least one tile to chip, found none")
    names = [t.name for t in tiles]
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"tiles: expected unique tile names, found duplicates {repeated}")
    infos = []
    for i, tile in enumerate(tiles):
        check_cancel(progress)
        check_split_name(tile.split, f"tile {tile.name}")
        infos.append(check_tile(tile))
        if progress:
            progress.report(0.02 * (i + 1) / len(tiles), f"checked {tile.name}")
    return infos, [chip_windows(info.width, info.height, size, stride) for info in infos]


class _Cutter:
    """Cuts loaded tiles into the writer's arrays; collects chip records, box counts and statistics."""

    def __init__(self, writer: ChipWriter, params: BoxParams, stats_split: str | None, scale: float) -> None:
        self.writer = writer
        self.params = params
        self.stats_split = stats_split
        self.scale = scale
        self.stats = TileStats(writer.bands)
        self.next_index = dict.fromkeys(writer.counts, 0)
        self.box_counts = np.zeros(len(DET_CLASSES), np.int64)
        self.off_palette: dict[str, int] = {}
        self.chips: list[dict[str, Any]] = []

    def cut(self, tile: TileSpec, loaded: _LoadedTile, windows: Sequence[Window], progress: Progress | None) -> None:
        image, mask, eroded = loaded.image, loaded.mask, loaded.eroded
        self.off_palette.update(loaded.off_palette)
        if self.scale < np.iinfo(image.dtype).max and (above := int(np.count_nonzero(image > self.scale))):
            log.warning("%s: %d values above scale_max %g (they scale above 1.0)", tile.image, above, self.scale)
        if self.stats_split in (None, tile.split):
            self.stats.add_image(image)
        self.stats.add_mask(mask)
        for first in range(0, len(windows), _BATCH):
            check_cancel(progress)
            batch = windows[first : first + _BATCH]
            chip_masks = np.stack([mask[y : y + h, x : x + w] for x, y, w, h in batch])
            found = boxes_from_masks(chip_masks, self.params)
            for (x, y, w, h), chip_mask, (boxes, labels) in zip(batch, chip_masks, found):
                index = self.next_index[tile.split]
                self.next_index[tile.split] += 1
                self.writer.put(tile.split, index, image[y : y + h, x : x + w], chip_mask, eroded[y : y + h, x : x + w])
                self.box_counts += np.bincount(labels, minlength=len(DET_CLASSES))
                named = [[*b, DET_CLASSES[c]] for b, c in zip(boxes.tolist(), labels.tolist())]
                record = {"split": tile.split, "index": index, "tile": tile.name, "window": [x, y, w, h]}
                self.chips.append({**record, "boxes": named})


def _cut_tiles(
    cutter: _Cutter,
    tiles: Sequence[TileSpec],
    infos: Sequence[RasterInfo],
    windows: Sequence[Sequence[Window]],
    progress: Progress | None,
) -> None:
    """Cut every tile into ``cutter``, reading the next tile in a background thread (GDAL releases the GIL)
    while this one is cut; progress by pixels done, from 2 % to 99 %."""
    total_px = sum(info.width * info.height for info in infos)
    done_px = 0
    with ThreadPoolExecutor(3, thread_name_prefix="chip-read") as pool:
        pending: _TileLoad | None = _TileLoad(pool, tiles[0])
        try:
            for i, (tile, info, tile_windows) in enumerate(zip(tiles, infos, windows)):
                check_cancel(progress)
                if progress:
                    progress.report(0.02 + 0.97 * done_px / total_px, f"chipping {tile.name}")
                loaded = pending.result()
                pending = _TileLoad(pool, tiles[i + 1]) if i + 1 < len(tiles) else None
                cutter.cut(tile, loaded, tile_windows, progress)
                done_px += info.width * info.height
                del loaded
        finally:
            if pending is not None:
                pending.cancel()


def _summary_record(summary: ChipSummary) -> dict[str, Any]:
    """The manifest's ``summary``: boxes per class, class pixel shares, off-palette pixels."""
    return {
        "boxes_per_class": summary.boxes_per_class,
        "class_pixel_shares": summary.class_pixel_shares,
        "off_palette_pixels": summary.off_palette_pixels,
    }


def chip_tiles(
    tiles: Sequence[TileSpec],
    out_dir: str | os.PathLike[str],
    *,
    size: int = ChipOptions.size,
    stride: int = ChipOptions.stride,
    dataset: str = "custom",
    band_names: Sequence[str] | None = None,
    connectivity: int | None = DEFAULT_CONNECTIVITY,
    min_area: int | None = DEFAULT_MIN_AREA,
    scale_max: float | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ChipSummary:
    """Chip arbitrary image/label tile pairs into ``out_dir`` (the format of docs/ARCHITECTURE.md).

    ``connectivity`` / ``min_area``: how blobs become boxes (None: the defaults, 8 and 16 px; see
    :mod:`engine.data.boxes`). ``band_names`` default to ``band1..bandN``. ``scale_max``: the raw value that maps
    to 1.0 (default: the dtype's maximum), recorded in ``value_scaling``. ``out_dir`` must be empty (or a chip
    dataset with ``overwrite``). A tile without eroded label gets one from :func:`engine.data.labels.erode_mask`.
    Band mean/std come from the pixels of the ``train`` tiles (all tiles when there is no ``train`` split; a
    regular subsample of tiles over ``STATS_SAMPLE`` pixels).
    """
    start = time.perf_counter()
    params = BoxParams(
        DEFAULT_CONNECTIVITY if connectivity is None else connectivity,
        DEFAULT_MIN_AREA if min_area is None else min_area,
    )
    infos, windows = _check_tiles(tiles, size, stride, progress)
    dtype, scale = _resolve_scaling(infos, scale_max)
    gsd = one_gsd([(str(info.path), info.gsd) for info in infos])  # one dataset, one GSD: checked before cutting
    bands = _band_names(infos[0], band_names)
    counts: dict[str, int] = {}
    for tile, tile_windows in zip(tiles, windows):
        counts[tile.split] = counts.get(tile.split, 0) + len(tile_windows)
    stats_split = "train" if "train" in counts else None
    if stats_split is None:
        log.warning("%s: no 'train' split; band mean/std are computed over all tiles", out_dir)
    total_px = sum(info.width * info.height for info in infos)
    with ChipWriter(out_dir, counts, size, len(bands), dtype, overwrite) as writer:
        cutter = _Cutter(writer, params, stats_split, scale)
        _cut_tiles(cutter, tiles, infos, windows, progress)
        check_cancel(progress)
        mean, std = cutter.stats.mean_std(scale)
        summary = ChipSummary(
            out_dir=str(Path(out_dir)),
            chips_per_split=dict(counts),
            boxes_per_class={name: int(n) for name, n in zip(DET_CLASSES, cutter.box_counts)},
            class_pixel_shares=cutter.stats.class_shares(),
            off_palette_pixels=cutter.off_palette,
            value_scaling={"dtype": dtype, "max": scale},
            mean=mean,
            std=std,
            megapixels=total_px / 1e6,
        )
        manifest = {
            "dataset": dataset,
            "bands": bands,
            **head_keys("seg", SEG_CLASSES, PALETTE),
            **head_keys("det", DET_CLASSES, ISPRS_DET_PALETTE),
            "task": "both",
            "ignore_index": IGNORE_INDEX,
            "chip_size": size,
            "stride": stride,
            "gsd": gsd,
            "value_scaling": summary.value_scaling,
            "mean": mean,
            "std": std,
            "stats_split": stats_split or "all",
            "box_params": params.as_dict(),
            "tiles": {tile.name: _tile_record(tile, info) for tile, info in zip(tiles, infos)},
            "splits": dict(counts),
            "summary": _summary_record(summary),
            "chips": cutter.chips,
        }
        writer.commit(manifest)
    summary.seconds = time.perf_counter() - start
    if progress:
        progress.report(1.0, "done")
    return summary


def chip_dataset(
    dataset: str,
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    size: int = ChipOptions.size,
    stride: int = ChipOptions.stride,
    *,
    bands: str | None = None,
    splits: Mapping[str, str | None] | str | os.PathLike[str] | None = None,
    **options: Any,
) -> ChipSummary:
    """Chip an ISPRS dataset (``vaihingen`` or ``potsdam``) found under ``root`` in its real layout.

    ``bands``: Potsdam "RGB" (default) / "IRRG" / "RGBIR"; Vaihingen "IRRG". ``splits``: override of the standard
    train/val tile split (dict or JSON file). ``options``: the other keyword arguments of :func:`chip_tiles`
    (``connectivity``, ``min_area``, ``scale_max``, ``overwrite``, ``progress``).
    """
    chosen = _resolve_bands(dataset, bands)
    tiles = find_isprs_tiles(dataset, root, chosen, splits)
    names = BAND_NAMES[(dataset, chosen)]
    return chip_tiles(tiles, out_dir, size=size, stride=stride, dataset=dataset, band_names=names, **options)
