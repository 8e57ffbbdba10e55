"""Cut georeferenced tiles into a chip dataset (docs/ARCHITECTURE.md "Chip dataset format").

Every tile is checked (header only) before anything is written, then read whole, once: imagery with one
pixel-interleaved GDAL read, labels decoded through a lookup table. Chips are copied into arrays preallocated
on disk; boxes come from each chip's own mask; band statistics from the train chips.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.chip.windows import chip_windows
from engine.core.classes import DET_CLASSES, IGNORE_INDEX, PALETTE, SEG_CLASSES
from engine.core.errors import ConfigError, InputError
from engine.core.progress import Progress, check_cancel
from engine.data.boxes import DEFAULT_CONNECTIVITY, DEFAULT_MIN_AREA, BoxParams, boxes_from_masks
from engine.data.chipstore import ChipWriter
from engine.data.isprs import BAND_NAMES, RasterInfo, TileSpec, check_tile, find_isprs_tiles, read_image, read_label
from engine.data.isprs import resolve_bands as _resolve_bands
from engine.data.labels import erode_mask

log = logging.getLogger(__name__)
Window = tuple[int, int, int, int]


@dataclass
class ChipSummary:
    """What a chipping run produced (returned by the API, printed by the CLI, kept in the manifest)."""

    out_dir: str
    chips_per_split: dict[str, int]
    boxes_per_class: dict[str, int]
    class_pixel_shares: dict[str, float]
    """Share of each class among the labelled (non-ignore) pixels of the chipped tiles, all splits."""
    off_palette_pixels: dict[str, int] = field(default_factory=dict)
    """Label file → pixels mapped to the nearest palette colour (files without any are not listed)."""
    value_scaling: dict[str, Any] = field(default_factory=dict)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    megapixels: float = 0.0
    """Tile pixels read (millions)."""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        lines = [f"chip dataset: {self.out_dir}"]
        lines.append("chips per split: " + ", ".join(f"{k} {v}" for k, v in self.chips_per_split.items()))
        lines.append("boxes per class: " + ", ".join(f"{k} {v}" for k, v in self.boxes_per_class.items()))
        lines.append("class pixel shares: " + ", ".join(f"{k} {v:.1%}" for k, v in self.class_pixel_shares.items()))
        scaling = self.value_scaling
        lines.append(f"value scaling: {scaling.get('dtype')} / {scaling.get('max')}")
        if self.off_palette_pixels:
            total = sum(self.off_palette_pixels.values())
            files = len(self.off_palette_pixels)
            lines.append(f"off-palette label pixels mapped to the nearest colour: {total} in {files} file(s)")
        rate = self.megapixels / self.seconds if self.seconds > 0 else float("nan")
        lines.append(f"read {self.megapixels:.1f} Mpx in {self.seconds:.1f} s ({rate:.1f} Mpx/s)")
        return "\n".join(lines)


_BATCH = 64
"""Chips whose boxes are found in one graph (and between two cancel checks)."""
_BLOCK_ROWS = 64
"""Rows per block for per-tile class counts: bounded temporaries on 6000-px-wide Potsdam tiles."""
STATS_SAMPLE = 250_000
"""Pixels per tile for band statistics: all of a smaller tile, a regular grid (every k-th row and column) of a
larger one — plenty for normalisation constants, and the exact pass cost as much as the rest of chipping."""


class _TileStats:
    """Per-band moments (float64 Gram matrix with a ones column) and class pixel counts, accumulated per tile.

    A tile's pixels count once, so the statistics describe the area the chips cover without the double counting
    of overlapping windows (and without padding).
    """

    def __init__(self, bands: int) -> None:
        self.bands = bands
        self.gram = np.zeros((bands + 1, bands + 1), np.float64)
        self.class_px = np.zeros(256, np.int64)

    def add_image(self, image: np.ndarray) -> None:
        height, width, bands = image.shape
        step = max(1, int(math.sqrt(height * width / STATS_SAMPLE)))
        sample = image[::step, ::step].reshape(-1, bands)
        flat = np.empty((len(sample), bands + 1), np.float64)
        flat[:, :bands] = sample
        flat[:, bands] = 1.0
        self.gram += flat.T @ flat

    def add_mask(self, mask: np.ndarray) -> None:
        for y in range(0, mask.shape[0], _BLOCK_ROWS):
            self.class_px += np.bincount(mask[y : y + _BLOCK_ROWS].ravel(), minlength=256)

    def mean_std(self, scale: float) -> tuple[list[float], list[float]]:
        n = self.gram[-1, -1]
        if n == 0:
            return [0.0] * self.bands, [1.0] * self.bands
        mean = self.gram[-1, :-1] / n
        var = np.maximum(np.diag(self.gram)[:-1] / n - mean**2, 0.0)
        return (mean / scale).tolist(), (np.sqrt(var) / scale).tolist()

    def class_shares(self) -> dict[str, float]:
        labelled = self.class_px[: len(SEG_CLASSES)]
        shares = labelled / max(int(labelled.sum()), 1)
        return {name: round(float(s), 6) for name, s in zip(SEG_CLASSES, shares)}


@dataclass
class _LoadedTile:
    image: np.ndarray
    mask: np.ndarray
    eroded: np.ndarray
    off_palette: dict[str, int]


def _load_tile(tile: TileSpec) -> _LoadedTile:
    """Read a tile whole: imagery, decoded label, decoded (or computed) eroded label."""
    image = read_image(tile.image)
    label = read_label(tile.label, boundary_is_ignore=False)
    off_palette = {str(tile.label): label.off_palette_pixels} if label.off_palette_pixels else {}
    if tile.eroded is None:
        return _LoadedTile(image, label.mask, erode_mask(label.mask), off_palette)
    eroded = read_label(tile.eroded, boundary_is_ignore=True)
    if eroded.off_palette_pixels:
        off_palette[str(tile.eroded)] = eroded.off_palette_pixels
    return _LoadedTile(image, label.mask, eroded.mask, off_palette)


def _resolve_scaling(infos: Sequence[RasterInfo], scale_max: float | None) -> tuple[str, float]:
    dtype = infos[0].dtype
    for info in infos:
        if info.dtype != dtype:
            raise InputError(f"{info.path}: expected {dtype} imagery like {infos[0].path}, found {info.dtype}")
        if info.bands != infos[0].bands:
            raise InputError(f"{info.path}: expected {infos[0].bands} bands like {infos[0].path}, found {info.bands}")
    top = float(np.iinfo(dtype).max)
    if scale_max is None:
        return dtype, top
    if not 0 < scale_max <= top:
        raise ConfigError(f"scale_max: expected a value in (0, {top:g}] for {dtype} imagery, found {scale_max!r}")
    return dtype, float(scale_max)


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
        self.stats = _TileStats(writer.bands)
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


def chip_tiles(
    tiles: Sequence[TileSpec],
    out_dir: str | os.PathLike[str],
    *,
    size: int = 320,
    stride: int = 320,
    dataset: str = "custom",
    band_names: Sequence[str] | None = None,
    connectivity: int = DEFAULT_CONNECTIVITY,
    min_area: int = DEFAULT_MIN_AREA,
    scale_max: float | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ChipSummary:
    """Chip arbitrary image/label tile pairs into ``out_dir`` (the format of docs/ARCHITECTURE.md).

    ``band_names`` default to ``band1..bandN``. ``scale_max``: the raw value that maps to 1.0 (default: the
    dtype's maximum), recorded in ``value_scaling``. ``out_dir`` must be empty (or a chip dataset with
    ``overwrite``). A tile without eroded label gets one from :func:`engine.data.labels.erode_mask`. Band mean/std
    come from the pixels of the ``train`` tiles (all tiles when there is no ``train`` split; a regular subsample
    of tiles over ``STATS_SAMPLE`` pixels).
    """
    start = time.perf_counter()
    params = BoxParams(connectivity, min_area)
    infos, windows = _check_tiles(tiles, size, stride, progress)
    dtype, scale = _resolve_scaling(infos, scale_max)
    bands = list(band_names) if band_names else [f"band{i + 1}" for i in range(infos[0].bands)]
    if len(bands) != infos[0].bands:
        raise ConfigError(f"band_names: expected {infos[0].bands} names for {infos[0].path}, found {bands}")
    counts: dict[str, int] = {}
    for tile, tile_windows in zip(tiles, windows):
        counts[tile.split] = counts.get(tile.split, 0) + len(tile_windows)
    stats_split = "train" if "train" in counts else None
    if stats_split is None:
        log.warning("%s: no 'train' split; band mean/std are computed over all tiles", out_dir)
    total_px = sum(info.width * info.height for info in infos)
    done_px = 0
    # the next tile is read in a background thread (GDAL releases the GIL) while this one is cut
    with ChipWriter(out_dir, counts, size, len(bands), dtype, overwrite) as writer, ThreadPoolExecutor(1) as pool:
        cutter = _Cutter(writer, params, stats_split, scale)
        pending: Future[_LoadedTile] | None = pool.submit(_load_tile, tiles[0])
        try:
            for i, (tile, info, tile_windows) in enumerate(zip(tiles, infos, windows)):
                check_cancel(progress)
                if progress:
                    progress.report(0.02 + 0.97 * done_px / total_px, f"chipping {tile.name}")
                loaded = pending.result()
                pending = pool.submit(_load_tile, tiles[i + 1]) if i + 1 < len(tiles) else None
                cutter.cut(tile, loaded, tile_windows, progress)
                done_px += info.width * info.height
                del loaded
        finally:
            if pending is not None:
                pending.cancel()
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
            "seg_classes": list(SEG_CLASSES),
            "palette": [list(c) for c in PALETTE],
            "det_classes": list(DET_CLASSES),
            "ignore_index": IGNORE_INDEX,
            "chip_size": size,
            "stride": stride,
            "gsd": infos[0].gsd,
            "value_scaling": summary.value_scaling,
            "mean": mean,
            "std": std,
            "stats_split": stats_split or "all",
            "box_params": params.as_dict(),
            "tiles": {tile.name: _tile_record(tile, info) for tile, info in zip(tiles, infos)},
            "splits": dict(counts),
            "summary": {
                "boxes_per_class": summary.boxes_per_class,
                "class_pixel_shares": summary.class_pixel_shares,
                "off_palette_pixels": summary.off_palette_pixels,
            },
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
    size: int = 320,
    stride: int = 320,
    *,
    bands: str | None = None,
    splits: Mapping[str, str | None] | str | os.PathLike[str] | None = None,
    connectivity: int = DEFAULT_CONNECTIVITY,
    min_area: int = DEFAULT_MIN_AREA,
    scale_max: float | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ChipSummary:
    """Chip an ISPRS dataset (``vaihingen`` or ``potsdam``) found under ``root`` in its real layout.

    ``bands``: Potsdam "RGB" (default) / "IRRG" / "RGBIR"; Vaihingen "IRRG". ``splits``: override of the standard
    train/val tile split (dict or JSON file). Other parameters as :func:`chip_tiles`.
    """
    chosen = _resolve_bands(dataset, bands)
    tiles = find_isprs_tiles(dataset, root, chosen, splits)
    return chip_tiles(
        tiles, out_dir, size=size, stride=stride, dataset=dataset, band_names=BAND_NAMES[(dataset, chosen)],
        connectivity=connectivity, min_area=min_area, scale_max=scale_max, overwrite=overwrite, progress=progress,
    )  # fmt: skip
