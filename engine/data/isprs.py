"""Find, pair and check the tiles of the ISPRS Vaihingen / Potsdam datasets as they lie on a user's disk.

Layouts, file names and the standard train/val split are REFERENCE §3. Tiles are named by their short id
("area1" for Vaihingen, "2_10" for Potsdam). Raster access is GDAL; it reads pixel-interleaved so a chipper can
slice (H, W, C) windows without a transpose copy.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from osgeo import gdal, osr

from engine.core.classes import IGNORE_INDEX, SEG_CLASSES
from engine.core.errors import ConfigError, InputError
from engine.data.labels import DecodedLabel, LabelDecoder

gdal.UseExceptions()
log = logging.getLogger(__name__)

DATASETS = ("vaihingen", "potsdam")
POTSDAM_BANDS = {"RGB": "2_Ortho_RGB", "IRRG": "3_Ortho_IRRG", "RGBIR": "4_Ortho_RGBIR"}
BAND_NAMES: dict[tuple[str, str], tuple[str, ...]] = {
    ("vaihingen", "IRRG"): ("nir", "red", "green"),
    ("potsdam", "RGB"): ("red", "green", "blue"),
    ("potsdam", "IRRG"): ("nir", "red", "green"),
    ("potsdam", "RGBIR"): ("red", "green", "blue", "nir"),
}
DEFAULT_BANDS = {"vaihingen": "IRRG", "potsdam": "RGB"}

_V_TRAIN = (1, 3, 5, 7, 11, 13, 15, 17, 21, 23, 26, 28, 30, 32, 34, 37)
_V_VAL = (2, 4, 6, 8, 10, 12, 14, 16, 20, 22, 24, 27, 29, 31, 33, 35, 38)
_P_TRAIN = (
    "2_10 2_11 2_12 3_10 3_11 3_12 4_10 4_11 4_12 5_10 5_11 5_12 6_7 6_8 6_9 6_10 6_11 6_12 7_7 7_8 7_9 7_10 7_11 7_12"
)
_P_VAL = "2_13 2_14 3_13 3_14 4_13 4_14 4_15 5_13 5_14 5_15 6_13 6_14 6_15 7_13"
STANDARD_SPLITS: dict[str, dict[str, str]] = {
    "vaihingen": {**{f"area{n}": "train" for n in _V_TRAIN}, **{f"area{n}": "val" for n in _V_VAL}},
    "potsdam": {**{t: "train" for t in _P_TRAIN.split()}, **{t: "val" for t in _P_VAL.split()}},
}
"""The common ISPRS train/val tile split (mmseg / torchgeo), REFERENCE §3."""

_LABEL_BLOCK_PX = 1 << 18
"""Pixels per block when decoding labels (~1 MiB of packed codes: stays in cache between read and decode)."""
_SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class TileSpec:
    """One image tile with its label and (optional) eroded label, assigned to a split."""

    name: str
    image: Path
    label: Path
    eroded: Path | None
    split: str


@dataclass(frozen=True)
class RasterInfo:
    """Header facts of one raster (no pixels read)."""

    path: Path
    width: int
    height: int
    bands: int
    dtype: str
    geotransform: tuple[float, ...] | None
    crs_wkt: str

    @property
    def gsd(self) -> float | None:
        """Pixel size in metres when the raster has a projected CRS in metres, else None."""
        if self.geotransform is None or not self.crs_wkt:
            return None
        srs = osr.SpatialReference()
        srs.ImportFromWkt(self.crs_wkt)
        if not srs.IsProjected():
            return None
        return abs(self.geotransform[1]) * srs.GetLinearUnits()


def _open(path: Path) -> gdal.Dataset:
    try:
        return gdal.Open(str(path), gdal.GA_ReadOnly)
    except RuntimeError as exc:
        raise InputError(f"{path}: expected a raster GDAL can read, could not open it: {exc}") from exc


def raster_info(path: str | os.PathLike[str]) -> RasterInfo:
    """Read the header of a raster: size, bands, data type, georeferencing."""
    path = Path(path)
    ds = _open(path)
    dtype = gdal_array_dtype(ds.GetRasterBand(1).DataType) if ds.RasterCount else "none"
    srs = ds.GetSpatialRef()
    return RasterInfo(
        path, ds.RasterXSize, ds.RasterYSize, ds.RasterCount, dtype, ds.GetGeoTransform(can_return_null=True),
        srs.ExportToWkt() if srs is not None else "",
    )  # fmt: skip


def gdal_array_dtype(data_type: int) -> str:
    """numpy dtype name of a GDAL data type."""
    from osgeo import gdal_array

    return np.dtype(gdal_array.GDALTypeCodeToNumericTypeCode(data_type)).name


def check_aligned(image: RasterInfo, label: RasterInfo) -> None:
    """Raise InputError unless ``label`` covers exactly the pixels of ``image`` (size, geotransform, CRS).

    A label without any georeferencing is accepted (some ISPRS label files carry none): its size must match.
    """
    if (image.width, image.height) != (label.width, label.height):
        raise InputError(
            f"{label.path}: expected the size of its image {image.path} ({image.width}×{image.height} px), "
            f"found {label.width}×{label.height} px"
        )
    if image.geotransform is not None and label.geotransform is not None:
        pixel = max(abs(image.geotransform[1]), abs(image.geotransform[5]), 1e-12)
        origins = zip(image.geotransform[::3], label.geotransform[::3])
        origin_ok = all(math.isclose(a, b, abs_tol=0.01 * pixel) for a, b in origins)
        size_ok = all(
            math.isclose(image.geotransform[i], label.geotransform[i], rel_tol=1e-6, abs_tol=1e-9 * pixel)
            for i in (1, 2, 4, 5)
        )
        if not (origin_ok and size_ok):
            raise InputError(
                f"{label.path}: expected the georeferencing of its image {image.path} (geotransform "
                f"{list(image.geotransform)}), found geotransform {list(label.geotransform)}"
            )
    if image.crs_wkt and label.crs_wkt:
        a, b = osr.SpatialReference(), osr.SpatialReference()
        a.ImportFromWkt(image.crs_wkt)
        b.ImportFromWkt(label.crs_wkt)
        if not a.IsSame(b):
            raise InputError(
                f"{label.path}: expected the CRS of its image {image.path} ({_crs_name(a)}), found {_crs_name(b)}"
            )


def _crs_name(srs: osr.SpatialReference) -> str:
    code = srs.GetAuthorityCode(None)
    return f"{srs.GetName()} (EPSG:{code})" if code else srs.GetName()


def check_tile(tile: TileSpec) -> RasterInfo:
    """Check one tile's files before any pixel is read; return the image header.

    Image: uint8 or uint16, any band count. Label / eroded label: 3-band uint8 RGB palette or 1-band uint8 class
    index, covering exactly the image's pixels.
    """
    image = raster_info(tile.image)
    if image.dtype not in ("uint8", "uint16"):
        raise InputError(f"{tile.image}: expected uint8 or uint16 imagery, found data type {image.dtype}")
    for path in (tile.label, tile.eroded):
        if path is None:
            continue
        label = raster_info(path)
        if label.dtype != "uint8" or label.bands not in (1, 3):
            raise InputError(
                f"{path}: expected a label raster with 3 uint8 bands (ISPRS RGB colours) or 1 uint8 band (class "
                f"index), found {label.bands} {label.dtype} band(s)"
            )
        check_aligned(image, label)
    return image


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a whole raster as an (H, W, C) array in its native data type (one pixel-interleaved GDAL read)."""
    ds = _open(Path(path))
    with _reading(path):
        values = ds.ReadAsArray(interleave="pixel")
        if values is None:  # GDAL without exceptions
            raise RuntimeError(gdal.GetLastErrorMsg() or "no data returned")
    return values.reshape(ds.RasterYSize, ds.RasterXSize, ds.RasterCount)


@contextlib.contextmanager
def _reading(path: str | os.PathLike[str]) -> Iterator[None]:
    """A raster that opens but fails mid-read (truncated, corrupt): one line naming it and GDAL's cause."""
    try:
        yield
    except RuntimeError as exc:
        raise InputError(f"raster '{path}': reading its pixels failed: {exc}") from None


def read_label(path: str | os.PathLike[str], *, boundary_is_ignore: bool) -> DecodedLabel:
    """Read a label raster as an (H, W) uint8 class-index mask.

    3-band RGB labels are decoded with the ISPRS palette (black = ignore when ``boundary_is_ignore``; off-palette
    colours → nearest, counted and logged). 1-band labels are class indices (0..5, IGNORE_INDEX = ignore).
    """
    path = Path(path)
    with _reading(path):
        return _read_label(path, boundary_is_ignore)


def _read_label(path: Path, boundary_is_ignore: bool) -> DecodedLabel:
    ds = _open(path)
    height, width = ds.RasterYSize, ds.RasterXSize
    if ds.RasterCount == 1:
        mask = ds.GetRasterBand(1).ReadAsArray().astype(np.uint8, copy=False)
        bad = (mask >= len(SEG_CLASSES)) & (mask != IGNORE_INDEX)
        if bad.any():
            raise InputError(
                f"{path}: expected class indices 0..{len(SEG_CLASSES) - 1} or {IGNORE_INDEX} in a 1-band label, "
                f"found values {sorted(np.unique(mask[bad]).tolist())[:10]}"
            )
        return DecodedLabel(mask)
    # read blocks of rows as R, G, B, B pixel-interleaved into 4 bytes per pixel and clear the top byte: each
    # pixel's little-endian uint32 is then the packed code r | g << 8 | b << 16; decode each block while in cache
    decoder = LabelDecoder(height, width, boundary_is_ignore=boundary_is_ignore, source=str(path))
    rows = max(1, _LABEL_BLOCK_PX // width)
    packed = np.empty((min(rows, height), width, 4), np.uint8)
    for y in range(0, height, rows):
        block = packed[: min(rows, height - y)]
        ds.ReadAsArray(0, y, width, len(block), buf_obj=block, interleave="pixel", band_list=[1, 2, 3, 3])
        codes = block.view("<u4")[:, :, 0]
        np.bitwise_and(codes, 0xFFFFFF, out=codes)
        decoder.decode(y, codes)
    return decoder.finish()


def _tile_key(dataset: str, name: str, where: str) -> str:
    text = Path(str(name)).stem if str(name).endswith(".tif") else str(name)
    if dataset == "vaihingen":
        match = re.fullmatch(r"(?:.*area)?(\d+)(?:_noBoundary)?", text)
        if match:
            return f"area{int(match.group(1))}"
    else:
        match = re.fullmatch(r"(?:top_potsdam_)?(\d+)_(\d+)(?:_[A-Za-z]+)*", text)
        if match:
            return f"{int(match.group(1))}_{int(match.group(2))}"
    example = "area1" if dataset == "vaihingen" else "2_10"
    raise ConfigError(f"{where}: expected {dataset} tile names like {example!r}, found {name!r}")


def check_split_name(split: object, where: str) -> None:
    """Split names become folder names in a chip dataset: letters, digits, ``_`` and ``-`` only."""
    if not (isinstance(split, str) and _SPLIT_NAME.fullmatch(split)):
        raise ConfigError(f"{where}: expected a split name like 'train' (letters, digits, _ or -), found {split!r}")


def load_splits(
    dataset: str, splits: Mapping[str, str | None] | str | os.PathLike[str] | None
) -> dict[str, str | None]:
    """Tile → split mapping: the standard one, a dict, or a JSON file of ``{tile: split}`` or ``{split: [tiles]}``.

    A split of ``null`` or ``""`` leaves the tile out. Split names become folder names, so they must be simple.
    """
    if splits is None:
        return dict(STANDARD_SPLITS[dataset])
    where = "splits"
    if not isinstance(splits, Mapping):
        where = str(splits)
        try:
            splits = json.loads(Path(splits).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{where}: expected a JSON file of tile → split, could not read it: {exc}") from exc
        if not isinstance(splits, Mapping):
            raise ConfigError(f"{where}: expected a JSON object of tile → split, found {type(splits).__name__}")
    if splits and all(isinstance(v, list) for v in splits.values()):
        splits = {tile: split for split, tiles in splits.items() for tile in tiles}
    mapping: dict[str, str | None] = {}
    for tile, split in splits.items():
        if split not in (None, ""):
            check_split_name(split, f"{where}, tile {tile!r}")
        mapping[_tile_key(dataset, tile, where)] = split or None
    return mapping


def _layout(dataset: str, root: Path, bands: str) -> tuple[Path, re.Pattern[str], str]:
    if dataset == "vaihingen":
        return root / "top", re.compile(r"top_mosaic_09cm_area(\d+)\.tif"), "top_mosaic_09cm_area{N}.tif"
    folder = POTSDAM_BANDS[bands]
    return root / folder, re.compile(rf"top_potsdam_(\d+)_(\d+)_{bands}\.tif"), f"top_potsdam_{{r}}_{{c}}_{bands}.tif"


def _label_paths(dataset: str, root: Path, name: str) -> tuple[Path, Path]:
    if dataset == "vaihingen":
        stem = f"top_mosaic_09cm_{name}"
        return (
            root / "gts_for_participants" / f"{stem}.tif",
            root / "gts_eroded_for_participants" / f"{stem}_noBoundary.tif",
        )
    stem = f"top_potsdam_{name}_label"
    return root / "5_Labels_all" / f"{stem}.tif", root / "5_Labels_all_noBoundary" / f"{stem}_noBoundary.tif"


def resolve_bands(dataset: str, bands: str | None) -> str:
    """Validate a band choice: Vaihingen has IRRG only; Potsdam RGB (default), IRRG or RGBIR."""
    if dataset not in DATASETS:
        raise ConfigError(f"dataset: expected one of {list(DATASETS)}, found {dataset!r}")
    chosen = (bands or DEFAULT_BANDS[dataset]).upper()
    if (dataset, chosen) not in BAND_NAMES:
        allowed = [b for d, b in BAND_NAMES if d == dataset]
        raise ConfigError(f"bands: expected one of {allowed} for {dataset}, found {bands!r}")
    return chosen


def find_isprs_tiles(
    dataset: str,
    root: str | os.PathLike[str],
    bands: str | None = None,
    splits: Mapping[str, str | None] | str | os.PathLike[str] | None = None,
) -> list[TileSpec]:
    """Find and pair the tiles of an ISPRS dataset under ``root``, checked and assigned to splits.

    ``bands``: Potsdam "RGB" (default), "IRRG" or "RGBIR"; Vaihingen "IRRG" (its only product). ``splits``:
    override of the standard split (see :func:`load_splits`); tiles not in it are left out with a warning.
    Raises InputError for a root without tiles, an image without label, or label/image misalignment.
    """
    bands = resolve_bands(dataset, bands)
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: expected the {dataset} dataset folder, it does not exist or is not a folder")
    mapping = load_splits(dataset, splits)
    folder, pattern, example = _layout(dataset, root, bands)
    matches = [(pattern.fullmatch(p.name), p) for p in folder.glob("*.tif")] if folder.is_dir() else []
    # natural order: area2 before area10, 2_10 before 2_13 before 3_10
    found = [p for _, p in sorted((tuple(int(g) for g in m.groups()), p) for m, p in matches if m)]
    if not found:
        present = sorted(p.name for p in root.iterdir())[:12]
        raise InputError(
            f"{root}: expected {dataset} {bands} tiles at {folder / example} (ISPRS layout), found none; "
            f"the folder holds {present or 'nothing'}"
        )
    tiles: list[TileSpec] = []
    skipped: list[str] = []
    for image in found:
        name = _tile_key(dataset, image.name, str(image))
        split = mapping.get(name)
        if split is None:
            skipped.append(name)
            continue
        label, eroded = _label_paths(dataset, root, name)
        if not label.is_file():
            raise InputError(f"{image}: expected its label at {label}, found no such file")
        tile = TileSpec(name, image, label, eroded if eroded.is_file() else None, split)
        if tile.eroded is None:
            log.warning("%s: no eroded label at %s; chipping erodes the label itself (3-px disc)", image, eroded)
        check_tile(tile)
        tiles.append(tile)
    if skipped:
        log.warning("%s: %d tile(s) in no split were left out: %s", root, len(skipped), ", ".join(skipped))
    missing = sorted(set(k for k, v in mapping.items() if v) - {t.name for t in tiles})
    if missing and splits is not None:
        log.warning("%s: split file names %d tile(s) not found on disk: %s", root, len(missing), ", ".join(missing))
    if not tiles:
        raise InputError(f"{root}: expected tiles assigned to a split, found {len(found)} tile(s) but none in a split")
    return tiles
