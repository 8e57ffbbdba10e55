"""engine.predict on inputs that are not plain GDAL files: a WindowReader (what the QGIS plugin builds for XYZ / WMS
layers) and GDAL dataset names (/vsizip/, GeoPackage rasters) give exactly the outputs of the GeoTIFF path."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from osgeo import gdal, ogr, osr
from testmodels import isprs_description
from torch import nn

from engine.core.errors import InputError
from engine.export import export_onnx
from engine.models import ModelConfig, build_model
from engine.predict import predict_raster

GSD = 0.09
ORIGIN = (500000.0, 5400000.0)
DESCRIPTION = isprs_description(GSD, classes=False)


def utm_wkt() -> str:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32632)
    return srs.ExportToWkt()


class ArrayWindows:
    """A WindowReader over an in-memory (bands, H, W) array whose last band is an alpha band."""

    def __init__(self, bands: np.ndarray) -> None:
        self.bands = bands
        self.name = "array layer"
        self.band_count, self.height, self.width = bands.shape
        self.geotransform = (ORIGIN[0], GSD, 0.0, ORIGIN[1], 0.0, -GSD)
        self.wkt = utm_wkt()
        self.dtype = "uint8"
        self.alpha_bands = (self.band_count,)
        self.reads: list[tuple[int, int, int, int]] = []

    def read(self, x: int, y: int, w: int, h: int, bands: Sequence[int]) -> np.ndarray:
        self.reads.append((x, y, w, h))
        return self.bands[[b - 1 for b in bands], y : y + h, x : x + w]

    def valid(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self.bands[-1, y : y + h, x : x + w] > 0

    def approx_max(self, bands: Sequence[int]) -> float:
        return float(self.bands[[b - 1 for b in bands]].max())


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = build_model(ModelConfig(channels=32, seg_channels=16)).eval()
    nn.init.normal_(net.seg_head.classifier.weight, std=5.0)
    nn.init.normal_(net.det_head.cls_tower.predictors[0].weight, std=3.0)
    nn.init.constant_(net.det_head.cls_tower.predictors[0].bias, 0.0)
    path = tmp_path_factory.mktemp("readers") / "model.onnx"
    export_onnx(net, path, DESCRIPTION, 64, overlap=16)
    return path


@pytest.fixture(scope="module")
def raster(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 150 x 130 RGBA GeoTIFF (alpha 0 in one corner) and its bands."""
    rng = np.random.default_rng(0)
    rgb = np.kron(rng.integers(0, 256, (3, 13, 15)), np.ones((10, 10), np.int64)).astype(np.uint8)
    alpha = np.full((1, 130, 150), 255, np.uint8)
    alpha[0, :30, :40] = 0
    bands = np.concatenate([rgb, alpha])
    path = tmp_path_factory.mktemp("readers") / "ortho.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(path), 150, 130, 4, gdal.GDT_Byte, ["ALPHA=YES"])
    ds.SetGeoTransform((ORIGIN[0], GSD, 0.0, ORIGIN[1], 0.0, -GSD))
    ds.SetProjection(utm_wkt())
    ds.WriteArray(bands)
    ds = None
    return path, bands


def outputs(folder: Path) -> tuple[np.ndarray, tuple, list[tuple]]:
    ds = gdal.Open(str(folder / "classes.tif"))
    classes, gt = ds.ReadAsArray(), ds.GetGeoTransform()
    vds = ogr.Open(str(folder / "dets.gpkg"))
    layer = vds.GetLayer(0)  # keep vds alive while the layer is read
    dets = sorted(
        (f["class_id"], round(f["score"], 5), tuple(round(v, 3) for v in f.GetGeometryRef().GetEnvelope()))
        for f in layer
    )
    return classes, gt, dets


def run(model: Path, source, folder: Path, **options) -> tuple[np.ndarray, tuple, list[tuple]]:
    folder.mkdir()
    predict_raster(model, source, folder / "classes.tif", folder / "dets.gpkg", score_thresh=0.5, **options)
    return outputs(folder)


def test_window_reader_gives_the_outputs_of_the_gdal_path(model, raster, tmp_path):
    path, bands = raster
    expected = run(model, path, tmp_path / "gdal")
    reader = ArrayWindows(bands)
    got = run(model, reader, tmp_path / "reader")
    np.testing.assert_array_equal(got[0], expected[0])
    assert got[1] == expected[1] and got[2] == expected[2]
    assert len(np.unique(expected[0])) >= 3 and len(expected[2]) > 0  # a real class map and real detections
    assert (expected[0][:30, :40] == 255).all() and (expected[0][30:, 40:] != 255).all()  # alpha 0 = nodata
    assert max(w * h for _, _, w, h in reader.reads) <= 64 * 64  # window by window, never the whole raster
    # the band mapping and the AOI apply to readers too
    aoi = tmp_path / "aoi.gpkg"
    vds = ogr.GetDriverByName("GPKG").CreateDataSource(str(aoi))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32632)
    layer = vds.CreateLayer("aoi", srs, ogr.wkbPolygon)
    feature = ogr.Feature(layer.GetLayerDefn())
    x0, y0 = ORIGIN
    feature.SetGeometry(ogr.CreateGeometryFromWkt(f"POLYGON(({x0} {y0},{x0 + 6} {y0},{x0 + 6} {y0 - 6},{x0} {y0}))"))
    layer.CreateFeature(feature)
    vds = None
    with_gdal = run(model, path, tmp_path / "gdal_aoi", aoi=aoi, bands=[3, 1, 2])
    with_reader = run(model, ArrayWindows(bands), tmp_path / "reader_aoi", aoi=aoi, bands=[3, 1, 2])
    np.testing.assert_array_equal(with_reader[0], with_gdal[0])
    assert not np.array_equal(with_gdal[0], expected[0])


def test_gdal_dataset_names_are_read(model, raster, tmp_path):
    path, _ = raster
    expected = run(model, path, tmp_path / "file")
    archive = tmp_path / "ortho.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(path, "inside/ortho.tif")
    gpkg = tmp_path / "ortho.gpkg"
    gdal.Translate(str(gpkg), str(path), format="GPKG", creationOptions=["TILE_FORMAT=PNG", "RASTER_TABLE=ortho"])
    for name, source in (("zip", f"/vsizip/{archive}/inside/ortho.tif"), ("gpkg", f"GPKG:{gpkg}:ortho")):
        got = run(model, source, tmp_path / name)
        np.testing.assert_array_equal(got[0], expected[0])
        assert got[1] == pytest.approx(expected[1]) and got[2] == expected[2], name
    with pytest.raises(InputError, match="GDAL cannot read it"):
        predict_raster(model, f"/vsizip/{archive}/missing.tif", tmp_path / "x.tif")
    assert not (tmp_path / "x.tif").exists()
