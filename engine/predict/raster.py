"""The input raster as the model needs it: band mapping, value scaling, validity (nodata / AOI), working grid.

When the raster's CRS is geographic, or its GSD lies outside the range of the model's training domains (metadata
``domains``; an older model's single ``gsd``), a lazily warped VRT (GDAL warp, with an alpha band marking real
pixels) is the working grid: still read window by window, so memory stays flat. Outputs
are computed on the working grid and warped back onto the input grid at the end.

A raster GDAL cannot open (a QGIS XYZ/WMS basemap, a virtual raster) comes in as a :class:`WindowReader`: an object
that defines its own grid (already at the model's GSD) and returns raw windows; tiling, blending, detection merging
and the outputs are the same code for both.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
from osgeo import gdal, ogr, osr

from engine.core.bands import check_against_any, mapping_hint, range_warning, raster_band_names
from engine.core.errors import ConfigError, InputError, keyword_logger, param_ref
from engine.core.modelio import ModelInfo

gdal.UseExceptions()
ogr.UseExceptions()
osr.UseExceptions()

log = keyword_logger("engine.predict")

_DTYPES = {gdal.GDT_Byte: "uint8", gdal.GDT_UInt16: "uint16"}


def srs_of(wkt: str) -> osr.SpatialReference | None:
    """SpatialReference with x=easting/longitude axis order, or None for an empty WKT."""
    if not wkt:
        return None
    srs = osr.SpatialReference()
    srs.ImportFromWkt(wkt)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def pixel_to_map(gt: Sequence[float], x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply a GDAL geotransform to pixel coordinates."""
    return gt[0] + x * gt[1] + y * gt[2], gt[3] + x * gt[4] + y * gt[5]


def _gsd_m(gt: Sequence[float], srs: osr.SpatialReference | None) -> float | None:
    if srs is None or srs.IsGeographic():
        return None
    return math.sqrt(abs(gt[1] * gt[5] - gt[2] * gt[4])) * srs.GetLinearUnits()


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS 84 UTM zone containing (lon, lat)."""
    zone = min(60, max(1, int((lon + 180.0) // 6.0) + 1))
    return (32600 if lat >= 0 else 32700) + zone


class WindowReader(Protocol):
    """A raster read window by window on a grid of its own (size, geotransform, CRS), for sources that are not
    GDAL datasets. ``read`` returns raw values (bands 1-based); ``valid`` a (h, w) bool mask, or None when every
    pixel of the window holds data."""

    name: str
    width: int
    height: int
    geotransform: tuple[float, ...]
    wkt: str
    band_count: int
    dtype: str
    alpha_bands: tuple[int, ...]

    def read(self, x: int, y: int, w: int, h: int, bands: Sequence[int]) -> np.ndarray: ...

    def valid(self, x: int, y: int, w: int, h: int) -> np.ndarray | None: ...

    def approx_max(self, bands: Sequence[int]) -> float: ...


@dataclasses.dataclass
class GdalWindows:
    """:class:`WindowReader`-style reads from a GDAL dataset (the working grid: the file or its warped VRT)."""

    ds: gdal.Dataset
    mask_bands: list[int]  # bands whose GDAL mask must be read (one for a per-dataset alpha); empty: all valid

    def read(self, x: int, y: int, w: int, h: int, bands: Sequence[int]) -> np.ndarray:
        return _checked(self.ds.ReadAsArray(x, y, w, h, band_list=list(bands))).reshape(len(bands), h, w)

    def valid(self, x: int, y: int, w: int, h: int) -> np.ndarray | None:
        if not self.mask_bands:
            return None
        masks = [_checked(self.ds.GetRasterBand(b).GetMaskBand().ReadAsArray(x, y, w, h)) for b in self.mask_bands]
        return np.logical_and.reduce([m > 0 for m in masks])


def _checked(values: np.ndarray | None) -> np.ndarray:
    """GDAL without exceptions returns None for a failed read: raise its message as exceptions mode would."""
    if values is None:
        raise RuntimeError(gdal.GetLastErrorMsg() or "GDAL returned no data")
    return values


def grid_dataset(width: int, height: int, geotransform: Sequence[float], wkt: str) -> gdal.Dataset:
    """A band-less in-memory dataset that only carries a grid (size, geotransform, CRS) for the outputs."""
    ds = gdal.GetDriverByName("MEM").Create("", int(width), int(height), 0, gdal.GDT_Byte)
    ds.SetGeoTransform(tuple(float(v) for v in geotransform))
    if wkt:
        ds.SetProjection(wkt)
    return ds


@dataclasses.dataclass
class Source:
    """The working raster: ``ds`` (input or warped VRT), its grid, the model-order band list and scaling."""

    path: str
    input_ds: gdal.Dataset
    ds: gdal.Dataset
    bands: list[int]
    scale: np.ndarray  # (C, 1, 1) multiply raw values
    offset: np.ndarray  # (C, 1, 1) then add: x = raw * scale + offset = (raw / max - mean) / std
    warped: bool
    windows: GdalWindows | WindowReader
    aoi: ogr.Geometry | None = None
    _aoi_store: object = dataclasses.field(default=None, repr=False)
    _aoi_layer: ogr.Layer | None = dataclasses.field(default=None, repr=False)

    @property
    def width(self) -> int:
        return self.ds.RasterXSize

    @property
    def height(self) -> int:
        return self.ds.RasterYSize

    @property
    def geotransform(self) -> tuple[float, ...]:
        return tuple(self.ds.GetGeoTransform())

    @property
    def wkt(self) -> str:
        return self.ds.GetProjection() or ""

    def read(self, x: int, y: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Normalised (C, size, size) float32 tile at (x, y) and its validity mask; pixels past the raster edge,
        nodata and outside the AOI are invalid and set to 0 (the training mean)."""
        w, h = min(size, self.width - x), min(size, self.height - y)
        try:
            raw = self.windows.read(x, y, w, h, self.bands)
            mask = self.windows.valid(x, y, w, h)
        except RuntimeError as exc:  # GDAL: a truncated / corrupt file fails only when that block is read
            raise InputError(f"input raster '{self.path}': reading pixels {w}x{h} at ({x}, {y}) failed: {exc}") from exc
        out = np.zeros((len(self.bands), size, size), np.float32)
        np.multiply(raw, self.scale, out=out[:, :h, :w], casting="unsafe")
        out[:, :h, :w] += self.offset
        valid = np.zeros((size, size), bool)
        valid[:h, :w] = True if mask is None else mask
        if self.aoi is not None:
            valid &= self._aoi_mask(x, y, size)
        out *= valid[None]
        return out, valid

    def _aoi_mask(self, x: int, y: int, size: int) -> np.ndarray:
        if self._aoi_layer is None:
            self._aoi_store = ogr.GetDriverByName("Memory").CreateDataSource("")
            self._aoi_layer = self._aoi_store.CreateLayer("aoi", srs_of(self.wkt), ogr.wkbMultiPolygon)
            feature = ogr.Feature(self._aoi_layer.GetLayerDefn())
            feature.SetGeometry(self.aoi)
            self._aoi_layer.CreateFeature(feature)
        gt = self.geotransform
        ox, oy = pixel_to_map(gt, x, y)
        mem = gdal.GetDriverByName("MEM").Create("", size, size, 1, gdal.GDT_Byte)
        mem.SetGeoTransform((ox, gt[1], gt[2], oy, gt[4], gt[5]))
        gdal.RasterizeLayer(mem, [1], self._aoi_layer, burn_values=[1])
        return mem.GetRasterBand(1).ReadAsArray() > 0


def _band_list(
    count: int, alpha: Sequence[int], names: Sequence[str], path: str, info: ModelInfo, bands: Sequence[int] | None
) -> list[int]:
    """The raster bands (1-based) in the model's band order: the mapping given, else every non-alpha band."""
    if bands is not None:
        bands = [int(b) for b in bands]
        if len(bands) != info.channels or not all(1 <= b <= count for b in bands):
            raise ConfigError(
                f"{param_ref('bands')} {bands}: expected {info.channels} band numbers in 1..{count} for the model's "
                f"inputs {list(info.bands or [])} (raster '{path}' has {count} bands)"
            )
        return bands
    data_bands = [b for b in range(1, count + 1) if b not in alpha]
    if len(data_bands) != info.channels:
        wanted = list(info.bands) if info.bands else f"{info.channels} bands"
        raise InputError(
            f"raster '{path}': the model expects {info.channels} bands {wanted}, the raster has {len(data_bands)} "
            f"({[names[b - 1] for b in data_bands]}); give a band mapping in {param_ref('bands')}, e.g. "
            f"{','.join(str(i + 1) for i in range(info.channels))} (raster band numbers in the model's band order)"
        )
    return data_bands


def _gdal_bands(ds: gdal.Dataset) -> tuple[list[int], list[str]]:
    """Alpha band numbers and every band's colour interpretation name."""
    interp = [ds.GetRasterBand(b).GetColorInterpretation() for b in range(1, ds.RasterCount + 1)]
    alpha = [b for b, value in enumerate(interp, start=1) if value == gdal.GCI_AlphaBand]
    return alpha, [gdal.GetColorInterpretationName(value) for value in interp]


class _ApproxRange:
    """The approximate (min, max) of the bands used, computed once when asked for (from overviews or a sample)."""

    def __init__(self, ds: gdal.Dataset, bands: Sequence[int]) -> None:
        self.ds, self.bands = ds, bands
        self._range: tuple[float, float] | None = None

    def __call__(self) -> tuple[float, float]:
        if self._range is None:
            ranges = [self.ds.GetRasterBand(b).ComputeRasterMinMax(True) for b in self.bands]
            self._range = (min(float(r[0]) for r in ranges), max(float(r[1]) for r in ranges))
        return self._range


def _band_warnings(ds: gdal.Dataset, band_list: Sequence[int], path: str, info: ModelInfo, mapped: bool) -> list[str]:
    """The raster's band names (descriptions, colour interpretation) against the model's: an InputError for a clear
    mismatch the user did not map, warnings for what cannot be checked."""
    if not info.bands:
        return []
    stated = raster_band_names(ds)
    fix = mapping_hint(stated, info.bands)
    trained = [list(info.bands)]
    for dataset in ((info.raw.get("provenance") or {}).get("datasets") or {}).values():
        bands = list(dataset.get("bands") or []) if isinstance(dataset, dict) else []
        if len(bands) == info.channels and bands not in trained:
            trained.append(bands)  # partial MTL: each task's chips may have had their own bands
    return check_against_any(stated.pick(band_list), trained, f"raster '{path}'", "the model", fix, not mapped)


def _value_scale(
    dtype: str, approx_range: Callable[[], tuple[float, float]], path: str, info: ModelInfo, value_max: float | None
) -> float:
    """The raw value that maps to 1.0: given, else that of the training domain (``info.value_scalings``) whose dtype
    the raster has (with a warning when the raster's values use little of it or exceed it), else the raster's max
    (with a warning)."""
    if value_max is not None:
        if value_max <= 0:
            raise ConfigError(f"{param_ref('value_max')}: expected a value > 0, found {value_max}")
        return float(value_max)
    trained = info.value_max_for(dtype)
    if trained is not None:
        if dtype != "uint8":
            warning = range_warning(f"raster '{path}'", dtype, approx_range(), trained, "value_max")
            if warning:
                log.warning(warning)
        return trained
    approx = approx_range()[1]
    scale = 1.0 if dtype not in _DTYPES.values() and approx <= 1.0 else max(approx, 1.0)
    log.warning(
        "raster '%s' is %s but the model was trained on %s (max %g): scaling by the raster's approximate maximum %g "
        "(set %s to override)",
        path,
        dtype,
        info.value_dtype,
        info.value_max,
        scale,
        param_ref("value_max"),
    )
    return scale


def _gdal_dtype(ds: gdal.Dataset, band: int) -> str:
    data_type = ds.GetRasterBand(band).DataType
    return _DTYPES.get(data_type, gdal.GetDataTypeName(data_type))


def _standardisation(info: ModelInfo, raw_max: float) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) with x = raw * scale + offset = (raw / max - mean) / std, per band (C, 1, 1)."""
    mean = np.asarray(info.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(info.std, np.float32).reshape(-1, 1, 1)
    if mean.size != info.channels or std.size != info.channels:
        raise InputError(f"model metadata: mean/std need {info.channels} values, found {mean.size}/{std.size}")
    return (1.0 / (raw_max * std)).astype(np.float32), (-mean / std).astype(np.float32)


def is_gdal_name(path: str) -> bool:
    """True for GDAL dataset names that are not plain files: /vsizip/…, /vsicurl/…, GPKG:file.gpkg:table, …"""
    return path.startswith("/vsi") or re.match(r"^[A-Za-z][A-Za-z0-9_]+:", path) is not None


def _warp(ds: gdal.Dataset, srs_wkt: str, res: float | None) -> gdal.Dataset:
    options = {"format": "VRT", "dstSRS": srs_wkt, "resampleAlg": "bilinear", "dstAlpha": True, "multithread": False}
    if res is not None:
        options.update(xRes=res, yRes=res)
    return gdal.Warp("", ds, **options)


MAX_GSD_RATIO: float = 8.0
"""A raster whose GSD is further than this factor from the model's is refused (``max_gsd_ratio`` overrides)."""


def check_gsd_ratio(path: str, gsd: float, model_gsd: float, max_gsd_ratio: float) -> None:
    """InputError when ``gsd`` and the model's GSD are more than ``max_gsd_ratio`` apart (either way): a 30 m
    scene given to a 20 cm model would be upsampled 150x and run for days."""
    ratio = max(gsd / model_gsd, model_gsd / gsd)
    if ratio > max_gsd_ratio:
        raise InputError(
            f"input raster '{path}': its GSD is {gsd:.3f} m and the model's {model_gsd:.3f} m ({ratio:.1f}x apart, "
            f"more than {max_gsd_ratio:g}x); use a model trained at this GSD, or set --max-gsd-ratio "
            f"(QGIS: Largest GSD ratio) above {ratio:.1f} to resample anyway"
        )


def open_source(
    path: str | os.PathLike[str] | WindowReader,
    info: ModelInfo,
    bands: Sequence[int] | None = None,
    value_max: float | None = None,
    gsd_tolerance: float = 0.25,
    notes: list[str] | None = None,
    max_gsd_ratio: float = MAX_GSD_RATIO,
) -> Source:
    """Open and check the input raster; choose the working grid (the raster itself, or a warped VRT).

    ``path`` is a file, a GDAL dataset name (``/vsizip/…``, ``GPKG:file:table``) or a :class:`WindowReader`, whose
    own grid is the working grid (it is made at the model's GSD by whoever built it)."""
    notes = notes if notes is not None else []
    if not isinstance(path, (str, os.PathLike)):
        return _reader_source(path, info, bands, value_max)
    path = str(path)
    if not os.path.isfile(path) and not is_gdal_name(path):
        raise InputError(f"input raster '{path}': expected a raster file, found nothing there")
    try:
        ds = gdal.Open(path, gdal.GA_ReadOnly)
    except RuntimeError as exc:
        raise InputError(f"input raster '{path}': GDAL cannot read it as a raster: {exc}") from exc
    if ds is None or ds.RasterCount == 0:
        raise InputError(f"input raster '{path}': expected a raster with bands, found none")
    alpha, names = _gdal_bands(ds)
    band_list = _band_list(ds.RasterCount, alpha, names, path, info, bands)
    raw_max = _value_scale(_gdal_dtype(ds, band_list[0]), _ApproxRange(ds, band_list), path, info, value_max)
    scale, offset = _standardisation(info, raw_max)
    known = len(notes)
    notes += _band_warnings(ds, band_list, path, info, bands is not None)
    work, warped = _working_grid(ds, path, info, (gsd_tolerance, max_gsd_ratio), notes)
    for note in notes[known:]:  # the model's own notes were logged by the caller
        log.warning(note)
    flags = {b: work.GetRasterBand(b).GetMaskFlags() for b in band_list}
    mask_bands = [b for b in band_list if flags[b] != gdal.GMF_ALL_VALID]
    if mask_bands and all(flags[b] & gdal.GMF_PER_DATASET for b in mask_bands):
        mask_bands = mask_bands[:1]  # one alpha / dataset mask serves every band
    return Source(
        path=path,
        input_ds=ds,
        ds=work,
        bands=band_list,
        scale=scale,
        offset=offset,
        warped=warped,
        windows=GdalWindows(work, mask_bands),
    )


def _working_grid(
    ds: gdal.Dataset, path: str, info: ModelInfo, gsd_limits: tuple[float, float], notes: list[str]
) -> tuple[gdal.Dataset, bool]:
    """The raster itself, or a warped VRT when its CRS is geographic or its GSD far from the model's
    (``gsd_limits``: the relative tolerance that needs no resampling, and the ratio refused outright)."""
    gsd_tolerance, max_gsd_ratio = gsd_limits
    gt = ds.GetGeoTransform()
    srs = srs_of(ds.GetProjection())
    if srs is None:
        notes.append(f"raster '{path}' has no CRS: GSD not checked, outputs carry no CRS")
    elif srs.IsGeographic():
        cx, cy = pixel_to_map(gt, ds.RasterXSize / 2.0, ds.RasterYSize / 2.0)
        utm = osr.SpatialReference()
        utm.ImportFromEPSG(utm_epsg(float(cx), float(cy)))
        probe = _warp(ds, utm.ExportToWkt(), None)
        res = math.sqrt(abs(probe.GetGeoTransform()[1] * probe.GetGeoTransform()[5]))
        if info.gsd:
            check_gsd_ratio(path, res, nearest_trained_gsd(res, info), max_gsd_ratio)
        res = working_gsd(res, info, gsd_tolerance) or res
        notes.append(
            f"geographic CRS: processed in {utm.GetName()} (EPSG:{utm_epsg(float(cx), float(cy))}) at {res:.3f} m"
        )
        return _warp(ds, utm.ExportToWkt(), res), True
    elif info.gsd:
        gsd = _gsd_m(gt, srs)
        if gsd is not None:
            check_gsd_ratio(path, gsd, nearest_trained_gsd(gsd, info), max_gsd_ratio)
        target = None if gsd is None else working_gsd(gsd, info, gsd_tolerance)
        if target is not None:
            lo, hi = info.gsd_range or (info.gsd, info.gsd)
            trained = f"{lo:.3f} m" if lo == hi else f"{lo:.3f}-{hi:.3f} m"
            notes.append(
                f"raster GSD {gsd:.3f} m is outside the model's trained {trained}: resampled to {target:.3f} m with "
                "GDAL warp (outputs are written on the input grid)"
            )
            return _warp(ds, ds.GetProjection(), target / srs.GetLinearUnits()), True
    return ds, False


def nearest_trained_gsd(gsd: float, info: ModelInfo) -> float:
    """The trained GSD nearest to ``gsd``: ``gsd`` itself inside the training domains' range, else its nearer end."""
    lo, hi = info.gsd_range or (info.gsd, info.gsd)
    return min(max(gsd, lo), hi)


def working_gsd(gsd: float, info: ModelInfo, tolerance: float) -> float | None:
    """The GSD to resample a raster of ``gsd`` metres to: None when it lies within the training domains' range
    (``info.gsd_range``, widened by ``tolerance``), else the nearer end of that range."""
    if not info.gsd:
        return None
    lo, hi = info.gsd_range or (info.gsd, info.gsd)
    if gsd < lo * (1.0 - tolerance):
        return lo
    if gsd > hi * (1.0 + tolerance):
        return hi
    return None


def _reader_source(reader: WindowReader, info: ModelInfo, bands: Sequence[int] | None, value_max: float | None):
    """A :class:`Source` over a :class:`WindowReader`: its grid is the working grid and the output grid."""
    names = [f"band {b}" for b in range(1, reader.band_count + 1)]
    band_list = _band_list(reader.band_count, reader.alpha_bands, names, reader.name, info, bands)

    def reader_range() -> tuple[float, float]:
        return 0.0, float(reader.approx_max(band_list))

    raw_max = _value_scale(reader.dtype, reader_range, reader.name, info, value_max)
    scale, offset = _standardisation(info, raw_max)
    grid = grid_dataset(reader.width, reader.height, reader.geotransform, reader.wkt)
    return Source(
        path=reader.name,
        input_ds=grid,
        ds=grid,
        bands=band_list,
        scale=scale,
        offset=offset,
        warped=False,
        windows=reader,
    )


class OutsideAoi(InputError):
    """The AOI does not overlap the raster (a region job skips that raster; a single prediction fails)."""


def load_aoi(path: str | os.PathLike[str], source: Source) -> ogr.Geometry:
    """Union of the AOI file's polygons in the working CRS; InputError when empty or off the raster."""
    path = str(path)
    try:
        vds = ogr.Open(path)
    except RuntimeError as exc:
        raise InputError(f"AOI '{path}': expected a polygon vector file, OGR cannot read it: {exc}") from exc
    if vds is None:
        raise InputError(f"AOI '{path}': expected a polygon vector file, OGR cannot read it")
    target = srs_of(source.wkt)
    union = ogr.Geometry(ogr.wkbMultiPolygon)
    for layer in vds:
        transform = None
        layer_srs = layer.GetSpatialRef()
        if layer_srs is not None and target is not None:
            layer_srs = layer_srs.Clone()
            layer_srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
            if not layer_srs.IsSame(target):
                transform = osr.CoordinateTransformation(layer_srs, target)
        for feature in layer:
            geom = feature.GetGeometryRef()
            if geom is None or geom.IsEmpty():
                continue
            geom = geom.Clone()
            if transform is not None:
                geom.Transform(transform)
            if geom.GetDimension() == 2:
                union = union.Union(geom)
    if union.IsEmpty() or union.GetArea() <= 0:
        raise InputError(f"AOI '{path}': expected at least one non-empty polygon, found none")
    gt = source.geotransform
    xs, ys = pixel_to_map(
        gt, np.array([0, source.width, source.width, 0]), np.array([0, 0, source.height, source.height])
    )
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for px, py in zip([*xs, xs[0]], [*ys, ys[0]]):
        ring.AddPoint_2D(float(px), float(py))
    extent = ogr.Geometry(ogr.wkbPolygon)
    extent.AddGeometry(ring)
    if not union.Intersects(extent) or union.Intersection(extent).GetArea() <= 0:
        raise OutsideAoi(f"AOI '{path}': its polygons do not overlap the raster '{source.path}'")
    return union
