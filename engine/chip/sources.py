"""Label sources on an image's pixel grid: polygon layers (any OGR format), class rasters, area-of-interest layers.

Vector features are read once (invalid geometries repaired with MakeValid, else Buffer(0), else skipped; both
counted), then per image transformed to its CRS and either rasterised with GDAL on its grid (segmentation masks,
AOI masks) or turned into pixel boxes (their envelopes; detection). Class rasters are read directly when they
share the image grid, else warped onto it with nearest neighbour; their nodata (and anything outside them) is
ignore.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from osgeo import gdal, ogr, osr

from engine.core.bands import raster_band_names
from engine.core.errors import InputError
from engine.data.isprs import gdal_array_dtype

gdal.UseExceptions()
ogr.UseExceptions()
osr.UseExceptions()
log = logging.getLogger(__name__)

_OUTSIDE = np.iinfo(np.int32).min
"""Warped class-raster value of pixels outside the class raster or on its nodata."""


@dataclass
class ImageGrid:
    """An image's pixel grid and header: what labels are rasterised onto."""

    path: Path
    width: int
    height: int
    bands: int
    dtype: str
    geotransform: tuple[float, ...]
    wkt: str
    nodata: tuple[float | None, ...]
    band_names: tuple[str, ...]

    @property
    def srs(self) -> osr.SpatialReference | None:
        if not self.wkt:
            return None
        srs = osr.SpatialReference()
        srs.ImportFromWkt(self.wkt)
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        return srs

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) in the image CRS (north-up grids only)."""
        x0, dx, _, y0, _, dy = self.geotransform
        xs, ys = (x0, x0 + dx * self.width), (y0, y0 + dy * self.height)
        return min(xs), min(ys), max(xs), max(ys)

    @property
    def pixel(self) -> float:
        """Pixel width in CRS units."""
        return abs(self.geotransform[1])

    @property
    def gsd(self) -> float:
        """Pixel width in metres (geographic CRS: approximated at the image centre)."""
        srs = self.srs
        if srs is None:
            return self.pixel
        if srs.IsProjected():
            return self.pixel * srs.GetLinearUnits()
        _, miny, _, maxy = self.bounds
        return self.pixel * 111_320.0 * max(math.cos(math.radians(0.5 * (miny + maxy))), 1e-6)


def open_raster(path: str | os.PathLike[str]) -> gdal.Dataset:
    try:
        ds = gdal.OpenEx(str(path), gdal.OF_RASTER)
    except RuntimeError as exc:
        raise InputError(f"{path}: expected a raster GDAL can read, could not open it: {exc}") from exc
    if ds is None:
        raise InputError(f"{path}: expected a raster GDAL can read, found none")
    return ds


def image_grid(path: str | os.PathLike[str]) -> ImageGrid:
    """Header of an image: size, bands, type, north-up geotransform and CRS (InputError without them)."""
    ds = open_raster(path)
    gt = ds.GetGeoTransform(can_return_null=True)
    if gt is None:
        raise InputError(f"{path}: expected a georeferenced image (geotransform), found none")
    if gt[2] != 0 or gt[4] != 0 or gt[5] >= 0:
        raise InputError(f"{path}: expected a north-up image (no rotation, negative y step), found geotransform {gt}")
    srs = ds.GetSpatialRef()
    bands = [ds.GetRasterBand(i + 1) for i in range(ds.RasterCount)]
    stated = raster_band_names(ds)  # a description, else the colour interpretation (Red, Green, Blue)
    names = tuple(b.GetDescription().strip() or stated.names[i] or f"band{i + 1}" for i, b in enumerate(bands))
    return ImageGrid(
        Path(path), ds.RasterXSize, ds.RasterYSize, ds.RasterCount, gdal_array_dtype(bands[0].DataType), tuple(gt),
        srs.ExportToWkt() if srs is not None else "", tuple(b.GetNoDataValue() for b in bands),
        names if len(set(names)) == len(names) else tuple(f"band{i + 1}" for i in range(len(bands))),
    )  # fmt: skip


def is_vector(path: str) -> bool:
    """True when GDAL opens ``path`` (``file|layername=x`` allowed) as a vector data source."""
    try:
        ds = gdal.OpenEx(path.split("|")[0], gdal.OF_VECTOR)
    except RuntimeError:
        return False
    return ds is not None and ds.GetLayerCount() > 0


# --- vector layers -------------------------------------------------------------------------------------------------


@dataclass
class VectorLabels:
    """The features of one vector layer in its own CRS, with their class-field values."""

    source: str
    srs: osr.SpatialReference | None
    geometries: list[ogr.Geometry]
    values: list[Any]
    repaired: int = 0
    skipped: int = 0
    fields: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.geometries)


def _open_layer(source: str) -> tuple[gdal.Dataset, ogr.Layer]:
    """``file`` (its first layer) or ``file|layername=NAME`` (the QGIS form)."""
    path, _, option = source.partition("|")
    try:
        ds = gdal.OpenEx(path, gdal.OF_VECTOR)
    except RuntimeError as exc:
        raise InputError(f"{path}: expected a vector layer OGR can read, could not open it: {exc}") from exc
    if ds is None or ds.GetLayerCount() == 0:
        raise InputError(f"{path}: expected a vector layer OGR can read, found no layer")
    name = option.split("=", 1)[1] if option.startswith("layername=") else None
    layer = ds.GetLayerByName(name) if name else ds.GetLayer(0)
    if layer is None:
        names = [ds.GetLayer(i).GetName() for i in range(ds.GetLayerCount())]
        raise InputError(f"{path}: expected a layer named {name!r}, found layers {names}")
    return ds, layer


def _repaired(geometry: ogr.Geometry) -> tuple[ogr.Geometry | None, bool]:
    """(valid geometry or None, whether it had to be repaired)."""
    if geometry.IsValid():
        return geometry, False
    for fix in (lambda g: g.MakeValid(), lambda g: g.Buffer(0)):
        try:
            fixed = fix(geometry)
        except RuntimeError:
            continue
        if fixed is not None and not fixed.IsEmpty() and fixed.IsValid():
            return fixed, True
    return None, False


def read_vector(source: str, class_field: str | None = None) -> VectorLabels:
    """All features of a layer with their ``class_field`` values (InputError if the field is missing)."""
    ds, layer = _open_layer(source)
    defn = layer.GetLayerDefn()
    fields = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    if class_field and class_field not in fields:
        raise InputError(f"{source}: expected a class field {class_field!r}, found fields {fields}")
    srs = layer.GetSpatialRef()
    if srs is not None:
        srs = srs.Clone()
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    labels = VectorLabels(source, srs, [], [], fields=fields)
    layer.ResetReading()
    for feature in layer:
        geometry = feature.GetGeometryRef()
        if geometry is None or geometry.IsEmpty():
            labels.skipped += 1
            continue
        valid, repaired = _repaired(geometry.Clone())
        if valid is None:
            labels.skipped += 1
            continue
        labels.repaired += int(repaired)
        labels.geometries.append(valid)
        labels.values.append(feature.GetField(class_field) if class_field else None)
    del ds
    if labels.repaired or labels.skipped:
        log.warning(
            "%s: %d invalid geometries repaired, %d empty/unrepairable skipped", source, labels.repaired, labels.skipped
        )
    return labels


def _transform(labels: VectorLabels, grid: ImageGrid) -> osr.CoordinateTransformation | None:
    target = grid.srs
    if labels.srs is None or target is None:
        missing = labels.source if labels.srs is None else str(grid.path)
        raise InputError(f"{missing}: expected a coordinate reference system to match labels and image, found none")
    if labels.srs.IsSame(target):
        return None
    try:
        return osr.CoordinateTransformation(labels.srs, target)
    except RuntimeError as exc:
        raise InputError(
            f"{labels.source}: its CRS {labels.srs.GetName()!r} cannot be transformed to the CRS of {grid.path} "
            f"({target.GetName()!r}): {exc}"
        ) from exc


def on_grid(labels: VectorLabels, grid: ImageGrid) -> tuple[list[ogr.Geometry], list[int]]:
    """Geometries in the image CRS that touch the image (and their feature indices)."""
    transform = _transform(labels, grid)
    minx, miny, maxx, maxy = grid.bounds
    out, kept = [], []
    for index, geometry in enumerate(labels.geometries):
        geometry = geometry.Clone()
        if transform is not None:
            try:
                geometry.Transform(transform)
            except RuntimeError as exc:
                raise InputError(
                    f"{labels.source}: feature {index} cannot be transformed to the CRS of {grid.path}: {exc}"
                ) from exc
        gx0, gx1, gy0, gy1 = geometry.GetEnvelope()
        if gx1 < minx or gx0 > maxx or gy1 < miny or gy0 > maxy:
            continue
        out.append(geometry)
        kept.append(index)
    return out, kept


def _mem_raster(grid: ImageGrid, fill: int) -> gdal.Dataset:
    ds = gdal.GetDriverByName("MEM").Create("", grid.width, grid.height, 1, gdal.GDT_Byte)
    ds.SetGeoTransform(grid.geotransform)
    if grid.wkt:
        ds.SetProjection(grid.wkt)
    ds.GetRasterBand(1).Fill(fill)
    return ds


def rasterize(geometries: Sequence[ogr.Geometry], burn: Sequence[int], grid: ImageGrid, fill: int) -> np.ndarray:
    """(H, W) uint8: each geometry burnt with its value on the image grid (later features win), ``fill`` elsewhere.

    GDAL's rule: a pixel is burnt when its centre is inside the polygon.
    """
    raster = _mem_raster(grid, fill)
    vector = ogr.GetDriverByName("Memory").CreateDataSource("")
    layer = vector.CreateLayer("labels", grid.srs, ogr.wkbUnknown)
    layer.CreateField(ogr.FieldDefn("burn", ogr.OFTInteger))
    defn = layer.GetLayerDefn()
    for geometry, value in zip(geometries, burn):
        feature = ogr.Feature(defn)
        feature.SetGeometry(geometry)
        feature.SetField("burn", int(value))
        layer.CreateFeature(feature)
    gdal.RasterizeLayer(raster, [1], layer, options=["ATTRIBUTE=burn"])
    return raster.GetRasterBand(1).ReadAsArray()


def pixel_boxes(geometries: Sequence[ogr.Geometry], grid: ImageGrid) -> np.ndarray:
    """float64 (N, 4) ``x0, y0, x1, y1`` pixel envelopes of the geometries on the image grid."""
    x0, dx, _, y0, _, dy = grid.geotransform
    boxes = np.zeros((len(geometries), 4), np.float64)
    for i, geometry in enumerate(geometries):
        minx, maxx, miny, maxy = geometry.GetEnvelope()
        boxes[i] = ((minx - x0) / dx, (maxy - y0) / dy, (maxx - x0) / dx, (miny - y0) / dy)
    return boxes


# --- class rasters -------------------------------------------------------------------------------------------------


def _same_grid(ds: gdal.Dataset, grid: ImageGrid) -> bool:
    if (ds.RasterXSize, ds.RasterYSize) != (grid.width, grid.height):
        return False
    gt = ds.GetGeoTransform(can_return_null=True)
    if gt is None:
        return True  # an ungeoreferenced label of the image's size is taken as on its grid
    pixel = grid.pixel
    if not all(abs(a - b) <= 0.01 * pixel for a, b in zip(gt, grid.geotransform)):
        return False
    srs = ds.GetSpatialRef()
    return srs is None or grid.srs is None or srs.IsSame(grid.srs)


def class_raster_values(path: str | os.PathLike[str]) -> tuple[np.ndarray, float | None]:
    """The distinct values of a 1-band class raster (without its nodata) and its nodata value."""
    ds = open_raster(path)
    if ds.RasterCount != 1:
        raise InputError(f"{path}: expected a 1-band class raster, found {ds.RasterCount} bands")
    band = ds.GetRasterBand(1)
    kind = gdal_array_dtype(band.DataType)
    if not np.issubdtype(np.dtype(kind), np.integer):
        raise InputError(f"{path}: expected integer class values, found data type {kind}")
    data = band.ReadAsArray()
    nodata = band.GetNoDataValue()
    values = np.unique(data)
    return (values[values != nodata] if nodata is not None else values), nodata


def class_raster_on_grid(path: str | os.PathLike[str], grid: ImageGrid) -> np.ndarray:
    """(H, W) int32 class-raster values on the image grid; :data:`_OUTSIDE` where nodata or outside the raster."""
    ds = open_raster(path)
    band = ds.GetRasterBand(1)
    nodata = band.GetNoDataValue()
    if _same_grid(ds, grid):
        data = band.ReadAsArray().astype(np.int32)
        if nodata is not None:
            data[data == nodata] = _OUTSIDE
        return data
    if ds.GetGeoTransform(can_return_null=True) is None or ds.GetSpatialRef() is None:
        raise InputError(f"{path}: expected a georeferenced class raster (or one on the grid of {grid.path})")
    minx, miny, maxx, maxy = grid.bounds
    try:
        warped = gdal.Warp(
            "", ds, format="MEM", outputBounds=(minx, miny, maxx, maxy), width=grid.width, height=grid.height,
            dstSRS=grid.wkt, resampleAlg="near", outputType=gdal.GDT_Int32, srcNodata=nodata, dstNodata=int(_OUTSIDE),
        )  # fmt: skip
    except RuntimeError as exc:
        raise InputError(f"{path}: could not be warped onto the grid of {grid.path}: {exc}") from exc
    return warped.GetRasterBand(1).ReadAsArray().astype(np.int32)


def map_values(values: np.ndarray, lookup: np.ndarray, low: int, ignore: int, where: str) -> np.ndarray:
    """int32 class-raster values → uint8 class indices (``_OUTSIDE`` → ``ignore``; unknown values → InputError)."""
    inside = values != _OUTSIDE
    shifted = values.astype(np.int64) - low
    known = inside & (shifted >= 0) & (shifted < len(lookup))
    out = np.full(values.shape, ignore, np.uint8)
    out[known] = lookup[shifted[known]]
    unknown = inside & (~known | (out == ignore))
    if unknown.any():
        found = sorted(np.unique(values[unknown]).tolist())[:10]
        raise InputError(f"{where}: raster values {found} are not in the class table")
    return out


def image_valid(image: np.ndarray, nodata: Sequence[float | None]) -> np.ndarray:
    """(H, W) bool: pixels with data (a pixel is nodata when every band with a nodata value holds it)."""
    flags = [image[..., b] == v for b, v in enumerate(nodata) if v is not None]
    if not flags:
        return np.ones(image.shape[:2], bool)
    return ~np.logical_and.reduce(flags)
