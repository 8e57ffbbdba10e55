"""Read any QGIS raster layer for inference: GDAL sources by name, everything else through its QGIS provider.

XYZ / WMS basemaps, virtual rasters and other non-GDAL providers have no file GDAL can open. They are read with
``QgsRasterDataProvider.block`` window by window, on a grid made here at the model's ground sample distance over
the area of interest (or the layer's extent), and handed to the engine as a ``WindowReader``: the engine's tiling,
blending, detection merging and outputs run unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransformContext,
    QgsDistanceArea,
    QgsPointXY,
    QgsProcessingUtils,
    QgsRasterBandStats,
    QgsRasterLayer,
    QgsRectangle,
    QgsUnitTypes,
)

MAX_PIXELS: float = 4e9
"""Largest working grid read through a provider (~63k² px): a world-wide basemap needs an area of interest."""

MAP_UNIT_TOLERANCE: float = 0.01
"""Map units are used as metres when they agree with the ellipsoidal ground distance to 1 % (UTM, national grids);
otherwise (Web Mercator, degrees) the ground distance sets the pixel size."""

_NUMPY_TYPES = {
    Qgis.Byte: np.uint8,
    Qgis.UInt16: np.uint16,
    Qgis.Int16: np.int16,
    Qgis.UInt32: np.uint32,
    Qgis.Int32: np.int32,
    Qgis.Float32: np.float32,
    Qgis.Float64: np.float64,
}
_ENGINE_DTYPES = {Qgis.Byte: "uint8", Qgis.UInt16: "uint16"}
_ARGB = (Qgis.ARGB32, Qgis.ARGB32_Premultiplied)


class LayerError(ValueError):
    """A layer that cannot be read for inference; the message names the layer and what to do."""


def gdal_name(layer: QgsRasterLayer) -> str | None:
    """The GDAL dataset name behind a layer of the GDAL provider (a file, ``/vsizip/…``, ``GPKG:f.gpkg:t``), else
    None: the layer is read through its provider."""
    if layer.providerType() != "gdal":
        return None
    return layer.source().split("|")[0]


def metres_per_unit(crs: QgsCoordinateReferenceSystem, centre: QgsPointXY, step: float) -> tuple[float, float]:
    """Ground metres per map unit along x and y at ``centre`` (ellipsoidal when the map units are not metres)."""
    factor = QgsUnitTypes.fromUnitToUnitFactor(crs.mapUnits(), QgsUnitTypes.DistanceMeters)
    area = QgsDistanceArea()
    area.setSourceCrs(crs, QgsCoordinateTransformContext())
    area.setEllipsoid(crs.ellipsoidAcronym() or "EPSG:7030")
    along_x = area.measureLine(centre, QgsPointXY(centre.x() + step, centre.y())) / step
    along_y = area.measureLine(centre, QgsPointXY(centre.x(), centre.y() + step)) / step
    if crs.isGeographic() or not math.isfinite(factor) or factor <= 0:
        return along_x, along_y
    if abs(along_x / factor - 1.0) <= MAP_UNIT_TOLERANCE and abs(along_y / factor - 1.0) <= MAP_UNIT_TOLERANCE:
        return factor, factor
    return along_x, along_y


def _native_gsd(layer: QgsRasterLayer) -> float | None:
    """The layer's own pixel size in map units, when the provider has a pixel grid (XYZ/WMS have none)."""
    provider = layer.dataProvider()
    if not provider.capabilities() & provider.Size or provider.xSize() <= 0:
        return None
    return provider.extent().width() / provider.xSize()


class ProviderWindows:
    """A QGIS raster layer read through (a clone of) its provider on a fixed grid; an engine ``WindowReader``.

    ARGB32 providers (XYZ, WMS: one colour band) appear as four bands R, G, B, alpha; pixels with alpha 0, the
    provider's nodata or outside the layer's extent are invalid."""

    def __init__(self, layer: QgsRasterLayer, extent: QgsRectangle, res_x: float, res_y: float) -> None:
        self.provider = layer.dataProvider().clone()  # a private provider: reads run in the engine's reader thread
        if self.provider is None or not self.provider.isValid():
            raise LayerError(f"layer '{layer.name()}': its '{layer.providerType()}' provider cannot be read")
        self.name = f"{layer.name()} ({layer.providerType()} layer)"
        self.layer_extent = QgsRectangle(self.provider.extent())
        self.width = max(1, math.ceil(extent.width() / res_x - 1e-6))
        self.height = max(1, math.ceil(extent.height() / res_y - 1e-6))
        self.geotransform = (extent.xMinimum(), res_x, 0.0, extent.yMaximum(), 0.0, -res_y)
        self.wkt = layer.crs().toWkt(QgsCoordinateReferenceSystem.WKT_PREFERRED_GDAL)
        self.data_type = self.provider.dataType(1)
        self.argb = self.data_type in _ARGB
        if not self.argb and self.data_type not in _NUMPY_TYPES:
            raise LayerError(f"layer '{layer.name()}': band data type {self.data_type} cannot be read")
        self.band_count = 4 if self.argb else self.provider.bandCount()
        self.alpha_bands: tuple[int, ...] = (4,) if self.argb else ()
        self.dtype = "uint8" if self.argb else _ENGINE_DTYPES.get(self.data_type, "float")
        self._valid: tuple[tuple[int, int, int, int], np.ndarray] | None = None

    def _rectangle(self, x: int, y: int, w: int, h: int) -> QgsRectangle:
        x0, rx, _, y0, _, ry = self.geotransform
        return QgsRectangle(x0 + x * rx, y0 + (y + h) * ry, x0 + (x + w) * rx, y0 + y * ry)

    def _block(self, band: int, x: int, y: int, w: int, h: int):
        block = self.provider.block(band, self._rectangle(x, y, w, h), w, h)
        if block is None or not block.isValid() or block.width() != w or block.height() != h:
            error = "no data returned" if self.provider.error().isEmpty() else self.provider.error().summary()
            raise LayerError(f"input layer '{self.name}': reading pixels {w}x{h} at ({x}, {y}) failed: {error}")
        return block

    def _inside_layer(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Pixels whose centre lies inside the layer's extent."""
        x0, rx, _, y0, _, ry = self.geotransform
        cx = x0 + (x + np.arange(w) + 0.5) * rx
        cy = y0 + (y + np.arange(h) + 0.5) * -ry
        ext = self.layer_extent
        inside_x = (cx >= ext.xMinimum()) & (cx <= ext.xMaximum())
        inside_y = (cy >= ext.yMinimum()) & (cy <= ext.yMaximum())
        return inside_y[:, None] & inside_x[None, :]

    def _read_argb(self, x: int, y: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        block = self._block(1, x, y, w, h)
        pixels = np.frombuffer(bytes(block.data()), np.uint32).reshape(h, w)
        alpha = (pixels >> 24).astype(np.float32)
        rgb = np.stack([(pixels >> shift) & 0xFF for shift in (16, 8, 0)]).astype(np.float32)
        if self.data_type == Qgis.ARGB32_Premultiplied:  # colour = value * alpha / 255: undo it
            np.divide(rgb * 255.0, alpha, out=rgb, where=alpha > 0)
        bands = np.concatenate([np.clip(np.rint(rgb), 0, 255), alpha[None]]).astype(np.uint8)
        return bands, alpha > 0

    def _read_numeric(self, x: int, y: int, w: int, h: int, bands: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        out = np.empty((len(bands), h, w), _NUMPY_TYPES[self.data_type])
        valid = np.ones((h, w), bool)
        for k, band in enumerate(bands):
            block = self._block(band, x, y, w, h)
            out[k] = np.frombuffer(bytes(block.data()), _NUMPY_TYPES[block.dataType()]).reshape(h, w)
            if block.hasNoDataValue():
                nodata = block.noDataValue()
                valid &= ~(np.isnan(out[k]) if math.isnan(nodata) else out[k] == nodata)
            elif block.hasNoData():  # a no-data bitmap without a value: only per-pixel access exists
                valid &= np.array([[not block.isNoData(r, c) for c in range(w)] for r in range(h)], bool)
        return out, valid

    def read(self, x: int, y: int, w: int, h: int, bands: Sequence[int]) -> np.ndarray:
        if self.argb:
            values, valid = self._read_argb(x, y, w, h)
            values = values[[b - 1 for b in bands]]
        else:
            values, valid = self._read_numeric(x, y, w, h, bands)
        self._valid = ((x, y, w, h), valid & self._inside_layer(x, y, w, h))
        return values

    def valid(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        if self._valid is None or self._valid[0] != (x, y, w, h):
            self.read(x, y, w, h, [1])
        return self._valid[1]

    def approx_max(self, bands: Sequence[int]) -> float:
        if self.argb:
            return 255.0
        stats = [self.provider.bandStatistics(b, QgsRasterBandStats.Max, self.layer_extent, 250_000) for b in bands]
        return max(float(s.maximumValue) for s in stats)


def provider_windows(layer: QgsRasterLayer, gsd: float | None, area: QgsRectangle | None) -> ProviderWindows:
    """A reader over ``area`` (layer CRS; default the layer's extent) at ``gsd`` metres per pixel on the ground
    (default the layer's own pixel size)."""
    extent = QgsRectangle(layer.dataProvider().extent())
    if area is not None and not area.isEmpty():
        extent = extent.intersect(area)
        if extent.isEmpty():
            raise LayerError(f"layer '{layer.name()}': the area of interest does not overlap the layer")
    if extent.isEmpty() or not all(map(math.isfinite, (extent.width(), extent.height()))):
        raise LayerError(f"layer '{layer.name()}': it has no extent to read; give an area of interest")
    if gsd:
        to_m_x, to_m_y = metres_per_unit(layer.crs(), extent.center(), min(extent.width(), extent.height()) / 100)
        res_x, res_y = gsd / to_m_x, gsd / to_m_y
    else:
        native = _native_gsd(layer)
        if native is None:
            raise LayerError(
                f"layer '{layer.name()}' has no pixel size of its own and the model no GSD: export the model with "
                "its GSD (pmtl models have one) or save the layer as a GeoTIFF"
            )
        res_x = res_y = native
    pixels = extent.width() / res_x * extent.height() / res_y
    if pixels > MAX_PIXELS:
        raise LayerError(
            f"layer '{layer.name()}': its {'area of interest' if area is not None else 'extent'} is "
            f"{extent.width() / res_x:.0f} x {extent.height() / res_y:.0f} px at the model's resolution (more than "
            f"{MAX_PIXELS:.0e} px); give a smaller area of interest (polygons or an extent)"
        )
    return ProviderWindows(layer, extent, res_x, res_y)


def prediction_input(layer: QgsRasterLayer, gsd: float | None, area: QgsRectangle | None) -> str | ProviderWindows:
    """What engine.predict reads for ``layer``: the GDAL dataset name when GDAL can open it (files, GeoPackage
    rasters, /vsizip/, /vsicurl/), otherwise a provider reader at the model's GSD over the area of interest."""
    name = gdal_name(layer)
    if name is not None:  # QGIS opened it with GDAL, so the engine's GDAL can too
        return name
    return provider_windows(layer, gsd, area)


def is_temporary_output(source: str) -> bool:
    """True for a file in Processing's temporary folder (memory layers saved for GDAL, selections, temporary
    outputs of earlier steps): it is gone when QGIS closes. ``source`` may carry a ``|layername=…`` suffix."""
    return Path(QgsProcessingUtils.tempFolder()).resolve() in Path(source.split("|")[0]).resolve().parents
