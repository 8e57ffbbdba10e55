"""Georeferenced outputs: class-map / probability GeoTIFFs (windowed writes), detections and polygons GeoPackages.

All are created at temporary paths by the caller (engine.core.atomic) and renamed only when the run succeeded.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from osgeo import gdal, ogr, osr

from engine.core.errors import InputError, OutputError, output_error
from engine.predict.detections import Detections
from engine.predict.raster import Source, pixel_to_map, srs_of

gdal.UseExceptions()
ogr.UseExceptions()

NODATA: int = 255
PROB_SCALE: float = 250.0
"""Probabilities are stored as uint8 p·250 (255 = nodata); band scale 1/250 gives p back in QGIS."""

_TIFF_OPTIONS = ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER"]


@contextlib.contextmanager
def writing(name: str | os.PathLike[str]) -> Iterator[list[str]]:
    """Run a write of the output ``name``: any GDAL / OGR / OS failure becomes one :class:`OutputError` naming it.

    GDAL's failure messages are collected meanwhile (a handler pushed for this thread only): the exception GDAL
    raises names only the last symptom ('Write error at scanline 512'), an earlier message the cause ('No space
    left on device'), and without exceptions, or when a dataset is closed, failures are messages only."""
    messages: list[str] = []

    def collect(error_class: int, error_number: int, text: str) -> None:
        if error_class >= gdal.CE_Failure:
            messages.append(str(text))

    gdal.PushErrorHandler(collect)
    try:
        yield messages
    except OutputError:
        raise
    except (RuntimeError, OSError) as exc:
        raise output_error(name, exc, messages) from None
    finally:
        gdal.PopErrorHandler()
    if messages:
        raise output_error(name, messages[-1], messages)


class RasterOutput:
    """A GeoTIFF being written, with the output name its errors report (not the hidden temporary file's)."""

    def __init__(self, name: str | os.PathLike[str], ds: gdal.Dataset) -> None:
        self.name, self.ds = str(name), ds

    def write(self, band: int, array: np.ndarray, x: int, y: int) -> None:
        with writing(self.name):
            self.ds.GetRasterBand(band).WriteArray(array, x, y)

    def close(self) -> None:
        """Flush and close, raising what failed: GDAL reports a failed flush at close as messages only."""
        ds, self.ds = self.ds, None
        if ds is not None:
            with writing(self.name):
                ds.FlushCache()
                del ds  # the last reference: the file is closed here, inside the error collection

    def discard(self) -> None:
        """Drop the dataset without checks (another error is already on its way; the file is removed)."""
        self.ds = None


def check_writable(path: str | os.PathLike[str] | None, parameter: str) -> None:
    """Fail before any work when an output cannot be created (missing/blocked folder)."""
    if path is None:
        return
    parent = Path(path).absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{parameter} '{path}': cannot create its folder '{parent}': {exc}") from exc
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{parameter} '{path}': expected a writable folder '{parent}', it is not writable")
    if Path(path).is_dir():
        raise InputError(f"{parameter} '{path}': expected a file path, found a folder")


def _create(path: Path, like: Source, bands: int, grid_ds: gdal.Dataset | None = None) -> gdal.Dataset:
    grid = grid_ds or like.ds
    out = gdal.GetDriverByName("GTiff").Create(
        str(path), grid.RasterXSize, grid.RasterYSize, bands, gdal.GDT_Byte, _TIFF_OPTIONS
    )
    out.SetGeoTransform(grid.GetGeoTransform())
    out.SetProjection(grid.GetProjection())
    for b in range(1, bands + 1):
        out.GetRasterBand(b).SetNoDataValue(NODATA)
    return out


def style_class_map(band: gdal.Band, classes: Sequence[str], colors: Sequence[Sequence[int]]) -> None:
    """The classes' colours as a colour table + class names on a class-id band (index 255 = nodata, transparent)."""
    table = gdal.ColorTable()
    for i, color in enumerate(colors):
        table.SetColorEntry(i, (*(int(c) for c in color[:3]), 255))
    table.SetColorEntry(NODATA, (0, 0, 0, 0))
    band.SetRasterColorTable(table)
    band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
    band.SetDescription("class_id")
    # class names as a TIFF-native metadata item: category names would need a .aux.xml sidecar, which would not
    # follow the temp-name → final-name rename
    band.SetMetadataItem("CLASS_NAMES", json.dumps(list(classes)))


def create_class_map(
    path: Path,
    src: Source,
    classes: Sequence[str],
    colors: Sequence[Sequence[int]],
    grid_ds: gdal.Dataset | None = None,
) -> gdal.Dataset:
    """A styled uint8 class-map GeoTIFF on the working grid of ``src`` (or on ``grid_ds``'s grid)."""
    out = _create(path, src, 1, grid_ds)
    style_class_map(out.GetRasterBand(1), classes, colors)
    return out


def create_probabilities(path: Path, src: Source, classes: Sequence[str]) -> gdal.Dataset:
    out = _create(path, src, len(classes))
    for b, name in enumerate(classes, start=1):
        band = out.GetRasterBand(b)
        band.SetDescription(f"p_{name}")
        band.SetScale(1.0 / PROB_SCALE)
        band.SetOffset(0.0)
    return out


def softmax(values: np.ndarray) -> np.ndarray:
    """Softmax over axis 0 (classes), in place-friendly float32."""
    shifted = values - values.max(axis=0, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=0, keepdims=True)
    return shifted


def warp_to_input(work_path: Path, out_path: Path, src: Source, resample: str, name: str = "") -> None:
    """Re-grid a working-grid output onto the input raster's exact grid (CRS, geotransform, size)."""
    with writing(name or out_path):
        _warp_to_input(work_path, out_path, src, resample)


def _warp_to_input(work_path: Path, out_path: Path, src: Source, resample: str) -> None:
    work = gdal.Open(str(work_path))
    target = src.input_ds
    out = gdal.GetDriverByName("GTiff").Create(
        str(out_path), target.RasterXSize, target.RasterYSize, work.RasterCount, gdal.GDT_Byte, _TIFF_OPTIONS
    )
    out.SetGeoTransform(target.GetGeoTransform())  # the exact input grid, not one re-derived from bounds
    out.SetProjection(target.GetProjection())
    # every TIFF tag (colour table → PhotometricInterpretation) before any pixel: once GDAL has flushed a block
    # (an output larger than its cache), libtiff refuses to change them
    for b in range(1, work.RasterCount + 1):
        source_band, band = work.GetRasterBand(b), out.GetRasterBand(b)
        band.SetNoDataValue(NODATA)
        if source_band.GetRasterColorTable() is not None:
            band.SetRasterColorTable(source_band.GetRasterColorTable())
            band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
        band.SetMetadata(source_band.GetMetadata())
        band.SetDescription(source_band.GetDescription())
        if source_band.GetScale() not in (None, 1.0):
            band.SetScale(source_band.GetScale())
    gdal.Warp(
        out,
        work,
        resampleAlg=resample,
        srcNodata=NODATA,
        dstNodata=NODATA,
        multithread=False,
        warpOptions=["INIT_DEST=NO_DATA"],  # pixels no working pixel reaches are nodata, written once
    )
    out.FlushCache()
    del out  # closed here, inside the caller's error collection
    work = None


def write_detections(
    path: Path,
    dets: Detections,
    classes: Sequence[str],
    src: Source,
    name: str = "",
    colors: Sequence[Sequence[int]] = (),
    sources: Sequence[str] | None = None,
) -> None:
    """One GeoPackage polygon layer 'detections' (fields class, class_id, score) in the input raster's CRS.

    The model's class names and colours go into the layer metadata (``CLASS_NAMES``, ``CLASS_COLORS``, JSON), as
    class maps carry theirs, so a styler that only has the file draws each class in the model's colour.
    ``sources`` (one per detection) adds a field ``source``: the raster each object was found in.
    """
    with writing(name or path):
        _write_detections(path, dets, classes, src, colors, sources)


def _write_detections(
    path: Path,
    dets: Detections,
    classes: Sequence[str],
    src: Source,
    colors: Sequence[Sequence[int]],
    sources: Sequence[str] | None = None,
) -> None:
    gt = src.geotransform
    work_srs = srs_of(src.wkt)
    out_srs = srs_of(src.input_ds.GetProjection())
    transform = None
    if src.warped and work_srs is not None and out_srs is not None:
        transform = osr.CoordinateTransformation(work_srs, out_srs)
    vds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = vds.CreateLayer("detections", out_srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("class", ogr.OFTString))
    layer.CreateField(ogr.FieldDefn("class_id", ogr.OFTInteger))
    layer.CreateField(ogr.FieldDefn("score", ogr.OFTReal))
    if sources is not None:
        layer.CreateField(ogr.FieldDefn("source", ogr.OFTString))
    layer.SetMetadataItem("CLASS_NAMES", json.dumps(list(classes)))
    if len(colors) == len(classes):
        layer.SetMetadataItem("CLASS_COLORS", json.dumps([[int(v) for v in c[:3]] for c in colors]))
    defn = layer.GetLayerDefn()
    layer.StartTransaction()
    for k, (box, score, label) in enumerate(zip(dets.boxes, dets.scores, dets.labels)):
        px = np.array([box[0], box[2], box[2], box[0], box[0]], np.float64)
        py = np.array([box[1], box[1], box[3], box[3], box[1]], np.float64)
        mx, my = pixel_to_map(gt, px, py)
        ring = ogr.Geometry(ogr.wkbLinearRing)
        for x, y in zip(mx, my):
            ring.AddPoint_2D(float(x), float(y))
        polygon = ogr.Geometry(ogr.wkbPolygon)
        polygon.AddGeometry(ring)
        if transform is not None:
            polygon.Transform(transform)
        feature = ogr.Feature(defn)
        feature.SetField("class", classes[int(label)] if int(label) < len(classes) else f"class_{int(label)}")
        feature.SetField("class_id", int(label))
        feature.SetField("score", float(score))
        if sources is not None:
            feature.SetField("source", str(sources[k]))
        feature.SetGeometry(polygon)
        layer.CreateFeature(feature)
    layer.CommitTransaction()
    vds.FlushCache()
    vds = None


def polygonize(class_map: Path, path: Path, classes: Sequence[str], name: str = "") -> int:
    """Polygons of the class map (GDAL polygonize, nodata excluded) with fields class_id and class; returns count."""
    with writing(name or path):
        return _polygonize(class_map, path, classes)


def _polygonize(class_map: Path, path: Path, classes: Sequence[str]) -> int:
    ds = gdal.Open(str(class_map))
    band = ds.GetRasterBand(1)
    vds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = vds.CreateLayer("segments", srs_of(ds.GetProjection()), ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("class_id", ogr.OFTInteger))
    layer.StartTransaction()
    gdal.Polygonize(band, band.GetMaskBand(), layer, 0, [], callback=None)
    layer.CommitTransaction()
    layer.CreateField(ogr.FieldDefn("class", ogr.OFTString))
    layer.StartTransaction()
    count = 0
    for feature in layer:
        cid = feature.GetFieldAsInteger("class_id")
        feature.SetField("class", classes[cid] if cid < len(classes) else f"class_{cid}")
        layer.SetFeature(feature)
        count += 1
    layer.CommitTransaction()
    vds = None
    ds = None
    return count
