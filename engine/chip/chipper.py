"""Cut georeferenced tiles into a chip dataset (docs/ARCHITECTURE.md "Chip dataset format").

Every tile is checked (header only) before anything is written, then read whole, once: imagery with one
pixel-interleaved GDAL read, labels decoded through a lookup table. Chips are copied into arrays preallocated
on disk; boxes come from each chip's own mask; band statistics from the train chips.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.chip.windows import chip_windows
from engine.core.classes import DET_CLASSES, IGNORE_INDEX, PALETTE, SEG_CLASSES
from engine.core.errors import ConfigError, InputError
from engine.core.progress import Progress, check_cancel
from engine.data.boxes import DEFAULT_CONNECTIVITY, DEFAULT_MIN_AREA, BoxParams, boxes_from_mask
from engine.data.chipstore import ChipWriter
from engine.data.isprs import BAND_NAMES, RasterInfo, TileSpec, check_tile, find_isprs_tiles, read_image, read_label
from engine.data.isprs import resolve_bands as _resolve_bands
from engine.data.labels import erode_mask

log = logging.getLogger(__name__)


@dataclass
class ChipSummary:
    """What a chipping run produced (returned by the API, printed by the CLI, kept in the manifest)."""

    out_dir: str
    chips_per_split: dict[str, int]
    boxes_per_class: dict[str, int]
    class_pixel_shares: dict[str, float]
    """Share of each class among labelled (non-ignore) chip pixels, all splits."""
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


class _BandStats:
    """Per-band sum and sum of squares via one small float32 Gram matrix per chip (shifted for precision)."""

    def __init__(self, bands: int, shift: float) -> None:
        self.bands = bands
        self.shift = np.float32(shift)
        self.gram = np.zeros((bands + 1, bands + 1), np.float64)

    def add(self, chip: np.ndarray) -> None:
        h, w, c = chip.shape
        work = np.empty((h, w, c + 1), np.float32)
        np.subtract(chip, self.shift, out=work[:, :, :c], dtype=np.float32)
        work[:, :, c] = 1.0
        flat = work.reshape(-1, c + 1)
        self.gram += flat.T @ flat

    def mean_std(self, scale: float) -> tuple[list[float], list[float]]:
        n = self.gram[-1, -1]
        if n == 0:
            return [0.0] * self.bands, [1.0] * self.bands
        centred = self.gram[-1, :-1] / n
        var = np.maximum(np.diag(self.gram)[:-1] / n - centred**2, 0.0)
        mean = (centred + float(self.shift)) / scale
        return mean.tolist(), (np.sqrt(var) / scale).tolist()


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
    ``overwrite``). A tile without eroded label gets one from :func:`engine.data.labels.erode_mask`.
    """
    start = time.perf_counter()
    params = BoxParams(connectivity, min_area)
    if size < 1 or stride < 1:
        raise ConfigError(f"size/stride: expected positive integers, found size={size}, stride={stride}")
    if not tiles:
        raise InputError(f"{out_dir}: expected at least one tile to chip, found none")
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
    dtype, scale = _resolve_scaling(infos, scale_max)
    bands = list(band_names) if band_names else [f"band{i + 1}" for i in range(infos[0].bands)]
    if len(bands) != infos[0].bands:
        raise ConfigError(f"band_names: expected {infos[0].bands} names for {infos[0].path}, found {bands}")
    windows = [chip_windows(info.width, info.height, size, stride) for info in infos]
    counts: dict[str, int] = {}
    for tile, tile_windows in zip(tiles, windows):
        counts[tile.split] = counts.get(tile.split, 0) + len(tile_windows)
    stats_split = "train" if "train" in counts else None
    if stats_split is None:
        log.warning("%s: no 'train' split; band mean/std are computed over all chips", out_dir)

    total_px = sum(info.width * info.height for info in infos)
    done_px = 0
    next_index = dict.fromkeys(counts, 0)
    class_px = np.zeros(256, np.int64)
    box_counts = np.zeros(len(DET_CLASSES), np.int64)
    band_stats = _BandStats(len(bands), shift=float(np.ceil(scale / 2)))
    off_palette: dict[str, int] = {}
    chips: list[dict[str, Any]] = []
    with ChipWriter(out_dir, counts, size, len(bands), dtype, overwrite=overwrite) as writer:
        for tile, info, tile_windows in zip(tiles, infos, windows):
            check_cancel(progress)
            if progress:
                progress.report(0.02 + 0.97 * done_px / total_px, f"reading {tile.name}")
            image = read_image(tile.image)
            label = read_label(tile.label, boundary_is_ignore=False)
            mask = label.mask
            if tile.eroded is not None:
                eroded_label = read_label(tile.eroded, boundary_is_ignore=True)
                eroded = eroded_label.mask
            else:
                eroded_label, eroded = None, erode_mask(mask)
            for path, decoded in ((tile.label, label), (tile.eroded, eroded_label)):
                if decoded is not None and decoded.off_palette_pixels:
                    off_palette[str(path)] = decoded.off_palette_pixels
            if scale < np.iinfo(dtype).max:
                above = int(np.count_nonzero(image > scale))
                if above:
                    log.warning("%s: %d values above scale_max %g (they scale above 1.0)", tile.image, above, scale)
            with_stats = stats_split is None or tile.split == stats_split
            for k, (x, y, w, h) in enumerate(tile_windows):
                if k % 64 == 0:
                    check_cancel(progress)
                index = next_index[tile.split]
                next_index[tile.split] += 1
                chip_mask = mask[y : y + h, x : x + w]
                chip_image = image[y : y + h, x : x + w]
                writer.put(tile.split, index, chip_image, chip_mask, eroded[y : y + h, x : x + w])
                counts_here = np.bincount(chip_mask.ravel(), minlength=256)
                class_px += counts_here
                boxes, labels = boxes_from_mask(chip_mask, params, counts_here)
                box_counts += np.bincount(labels, minlength=len(DET_CLASSES))
                if with_stats:
                    band_stats.add(chip_image)
                chips.append({
                    "split": tile.split, "index": index, "tile": tile.name, "window": [x, y, w, h],
                    "boxes": [[*map(int, b), DET_CLASSES[c]] for b, c in zip(boxes, labels)],
                })  # fmt: skip
            done_px += info.width * info.height
            del image, label, mask, eroded
        check_cancel(progress)
        mean, std = band_stats.mean_std(scale)
        labelled = class_px[: len(SEG_CLASSES)]
        shares = labelled / max(int(labelled.sum()), 1)
        summary = ChipSummary(
            out_dir=str(Path(out_dir)),
            chips_per_split=dict(counts),
            boxes_per_class={name: int(n) for name, n in zip(DET_CLASSES, box_counts)},
            class_pixel_shares={name: round(float(s), 6) for name, s in zip(SEG_CLASSES, shares)},
            off_palette_pixels=off_palette,
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
            "chips": chips,
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
