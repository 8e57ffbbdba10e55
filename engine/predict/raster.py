"""The input raster as the model needs it: band mapping, value scaling, validity (nodata / AOI), working grid.

When the raster's CRS is geographic, or its GSD is far from the model's, a lazily warped VRT (GDAL warp, with an
alpha band marking real pixels) is the working grid: still read window by window, so memory stays flat. Outputs
are computed on the working grid and warped back onto the input grid at the end.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence

import numpy as np
from osgeo import gdal, ogr, osr

from engine.core.errors import ConfigError, InputError
from engine.export.metadata import ModelInfo

gdal.UseExceptions()
ogr.UseExceptions()
osr.UseExceptions()

log = logging.getLogger("engine.predict")

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
    mask_bands: list[int]  # bands whose GDAL mask must be read (one for a per-dataset alpha); empty: all valid
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
        raw = self.ds.ReadAsArray(x, y, w, h, band_list=self.bands)
        raw = raw.reshape(len(self.bands), h, w)
        out = np.zeros((len(self.bands), size, size), np.float32)
        np.multiply(raw, self.scale, out=out[:, :h, :w], casting="unsafe")
        out[:, :h, :w] += self.offset
        valid = np.zeros((size, size), bool)
        if not self.mask_bands:
            valid[:h, :w] = True
        else:
            masks = [self.ds.GetRasterBand(b).GetMaskBand().ReadAsArray(x, y, w, h) for b in self.mask_bands]
            valid[:h, :w] = np.logical_and.reduce([m > 0 for m in masks])
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


def _band_list(ds: gdal.Dataset, path: str, info: ModelInfo, bands: Sequence[int] | None) -> list[int]:
    count = ds.RasterCount
    if bands is not None:
        bands = [int(b) for b in bands]
        if len(bands) != info.channels or not all(1 <= b <= count for b in bands):
            raise ConfigError(
                f"parameter 'bands' {bands}: expected {info.channels} band numbers in 1..{count} for the model's "
                f"inputs {list(info.bands or [])} (raster '{path}' has {count} bands)"
            )
        return bands
    data_bands = [b for b in range(1, count + 1) if ds.GetRasterBand(b).GetColorInterpretation() != gdal.GCI_AlphaBand]
    if len(data_bands) != info.channels:
        names = [gdal.GetColorInterpretationName(ds.GetRasterBand(b).GetColorInterpretation()) for b in data_bands]
        wanted = list(info.bands) if info.bands else f"{info.channels} bands"
        raise InputError(
            f"raster '{path}': the model expects {info.channels} bands {wanted}, the raster has {len(data_bands)} "
            f"({names}); give a band mapping, e.g. --bands {','.join(str(i + 1) for i in range(info.channels))} "
            "(raster band numbers in the model's band order)"
        )
    return data_bands


def _value_scale(ds: gdal.Dataset, path: str, bands: list[int], info: ModelInfo, value_max: float | None) -> float:
    if value_max is not None:
        if value_max <= 0:
            raise ConfigError(f"parameter 'value_max' must be > 0, found {value_max}")
        return float(value_max)
    dtype = _DTYPES.get(ds.GetRasterBand(bands[0]).DataType, gdal.GetDataTypeName(ds.GetRasterBand(bands[0]).DataType))
    if dtype == info.value_dtype:
        return info.value_max
    approx = max(float(ds.GetRasterBand(b).ComputeRasterMinMax(True)[1]) for b in bands)
    scale = 1.0 if dtype not in _DTYPES.values() and approx <= 1.0 else max(approx, 1.0)
    log.warning(
        "raster '%s' is %s but the model was trained on %s (max %g): scaling by the raster's approximate maximum %g "
        "(set value_max / --value-max to override)",
        path,
        dtype,
        info.value_dtype,
        info.value_max,
        scale,
    )
    return scale


def _warp(ds: gdal.Dataset, srs_wkt: str, res: float | None) -> gdal.Dataset:
    options = {"format": "VRT", "dstSRS": srs_wkt, "resampleAlg": "bilinear", "dstAlpha": True, "multithread": False}
    if res is not None:
        options.update(xRes=res, yRes=res)
    return gdal.Warp("", ds, **options)


def open_source(
    path: str | os.PathLike[str],
    info: ModelInfo,
    bands: Sequence[int] | None = None,
    value_max: float | None = None,
    gsd_tolerance: float = 0.25,
    notes: list[str] | None = None,
) -> Source:
    """Open and check the input raster; choose the working grid (the raster itself, or a warped VRT)."""
    notes = notes if notes is not None else []
    path = str(path)
    if not os.path.isfile(path):
        raise InputError(f"input raster '{path}': expected a raster file, found nothing there")
    try:
        ds = gdal.Open(path, gdal.GA_ReadOnly)
    except RuntimeError as exc:
        raise InputError(f"input raster '{path}': GDAL cannot read it as a raster: {exc}") from exc
    if ds is None or ds.RasterCount == 0:
        raise InputError(f"input raster '{path}': expected a raster with bands, found none")
    band_list = _band_list(ds, path, info, bands)
    raw_max = _value_scale(ds, path, band_list, info, value_max)
    mean = np.asarray(info.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(info.std, np.float32).reshape(-1, 1, 1)
    if mean.size != info.channels or std.size != info.channels:
        raise InputError(f"model metadata: mean/std need {info.channels} values, found {mean.size}/{std.size}")

    gt = ds.GetGeoTransform()
    srs = srs_of(ds.GetProjection())
    work, warped = ds, False
    if srs is None:
        notes.append(f"raster '{path}' has no CRS: GSD not checked, outputs carry no CRS")
    elif srs.IsGeographic():
        cx, cy = pixel_to_map(gt, ds.RasterXSize / 2.0, ds.RasterYSize / 2.0)
        utm = osr.SpatialReference()
        utm.ImportFromEPSG(utm_epsg(float(cx), float(cy)))
        probe = _warp(ds, utm.ExportToWkt(), None)
        res = math.sqrt(abs(probe.GetGeoTransform()[1] * probe.GetGeoTransform()[5]))
        if info.gsd and abs(res / info.gsd - 1.0) > gsd_tolerance:
            res = info.gsd
        work, warped = _warp(ds, utm.ExportToWkt(), res), True
        notes.append(
            f"geographic CRS: processed in {utm.GetName()} (EPSG:{utm_epsg(float(cx), float(cy))}) at {res:.3f} m"
        )
    elif info.gsd:
        gsd = _gsd_m(gt, srs)
        if gsd is not None and abs(gsd / info.gsd - 1.0) > gsd_tolerance:
            notes.append(
                f"raster GSD {gsd:.3f} m is far from the model's {info.gsd:.3f} m: resampled to it with GDAL warp "
                "(outputs are written on the input grid)"
            )
            work, warped = _warp(ds, ds.GetProjection(), info.gsd / srs.GetLinearUnits()), True
    for note in notes:
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
        scale=(1.0 / (raw_max * std)).astype(np.float32),
        offset=(-mean / std).astype(np.float32),
        warped=warped,
        mask_bands=mask_bands,
    )


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
        raise InputError(f"AOI '{path}': its polygons do not overlap the raster '{source.path}'")
    return union
