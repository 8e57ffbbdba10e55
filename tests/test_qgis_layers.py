"""pmtl:detect_segment on layers that are not GeoTIFF files, run headless as the Toolbox runs it: a local XYZ
basemap (tiles made by gdal2tiles, read through QGIS's provider at the model's GSD) and a GeoPackage raster."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from osgeo import gdal, osr
from qgis.core import QgsCoordinateReferenceSystem, QgsProcessingException, QgsRasterLayer
from qgis_helpers import run_algorithm, write_geotiff

pytestmark = pytest.mark.qgis
GSD = 0.5
ORIGIN = (500000.0, 5400000.0)  # EPSG:32632, latitude ~48.7 N: Web Mercator's scale there is ~1.51
BLOCK = 32  # px of one colour in the source ortho
SIZE = 256


@pytest.fixture(scope="module")
def data(tmp_path_factory, colour_model) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("layers")
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (3, SIZE // BLOCK, SIZE // BLOCK))
    image = np.kron(blocks, np.ones((BLOCK, BLOCK), np.int64)).astype(np.uint8)
    ortho = write_geotiff(folder / "ortho.tif", image, gsd=GSD, origin=ORIGIN)
    model = colour_model(GSD)
    return {"folder": folder, "ortho": ortho, "model": model}


def detect(layer: Any, model: Path, out: Path, **extra: Any) -> dict:
    out.mkdir()
    params = {
        "INPUT": layer,
        "MODEL": str(model),
        "OUTPUT_RASTER": str(out / "classes.tif"),
        "OUTPUT_DETECTIONS": str(out / "detections.gpkg"),
        **extra,
    }
    return run_algorithm("pmtl:detect_segment", params)


def class_at(path: Path, points: np.ndarray, epsg_of_points: int) -> np.ndarray:
    """Class ids of ``path`` at map points given in ``epsg_of_points``."""
    ds = gdal.Open(str(path))
    src = osr.SpatialReference()
    src.ImportFromEPSG(epsg_of_points)
    dst = osr.SpatialReference(wkt=ds.GetProjection())
    for srs in (src, dst):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    transform = osr.CoordinateTransformation(src, dst)
    inverse = gdal.InvGeoTransform(ds.GetGeoTransform())
    data = ds.ReadAsArray()
    out = []
    for x, y in points:
        mx, my, _ = transform.TransformPoint(float(x), float(y))
        px, py = gdal.ApplyGeoTransform(inverse, mx, my)
        out.append(data[int(py), int(px)])
    return np.array(out)


@pytest.mark.skipif(shutil.which("gdal2tiles.py") is None, reason="gdal2tiles.py (GDAL's Python scripts) not installed")
def test_xyz_basemap_through_the_qgis_provider(qgis_processing, data, tmp_path):
    tiles = tmp_path / "tiles"
    paths = [str(data["ortho"]), str(tiles)]
    subprocess.run(
        ["gdal2tiles.py", "--xyz", "-z", "17-19", "-r", "near", "-w", "none", "--processes", "1", "-q", *paths],
        check=True,
        timeout=120,
    )
    uri = f"type=xyz&url=file://{tiles}/{{z}}/{{x}}/{{y}}.png&zmin=17&zmax=19"
    layer = QgsRasterLayer(uri, "local xyz", "wms")
    assert layer.isValid() and layer.crs().authid() == "EPSG:3857"

    # a world-wide basemap without an area of interest is refused, naming the layer and what to do
    with pytest.raises(QgsProcessingException, match=r"local xyz.*give a smaller area of interest"):
        detect(layer, data["model"], tmp_path / "world")

    # an extent 20 m larger than the ortho all round: the class map's data region must be the ortho's footprint
    x0, y0, span = ORIGIN[0], ORIGIN[1], SIZE * GSD
    extent = f"{x0 - 20},{x0 + span + 20},{y0 - span - 20},{y0 + 20} [EPSG:32632]"
    results = detect(layer, data["model"], tmp_path / "xyz", EXTENT=extent)
    out = Path(results["OUTPUT_RASTER"])
    ds = gdal.Open(str(out))
    assert QgsCoordinateReferenceSystem(ds.GetProjection()).authid() == "EPSG:3857"
    gt = ds.GetGeoTransform()
    latitude = math.radians(48.73)
    assert gt[1] * math.cos(latitude) == pytest.approx(GSD, rel=0.01)  # the model's GSD on the ground
    classes = ds.ReadAsArray()
    rows, cols = np.nonzero(classes != 255)
    footprint = [gt[0] + cols.min() * gt[1], gt[0] + (cols.max() + 1) * gt[1]]
    footprint += [gt[3] + (rows.max() + 1) * gt[5], gt[3] + rows.min() * gt[5]]
    utm, mercator = osr.SpatialReference(), osr.SpatialReference()
    utm.ImportFromEPSG(32632)
    mercator.ImportFromEPSG(3857)
    for srs in (utm, mercator):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    to_mercator = osr.CoordinateTransformation(utm, mercator)
    corners = [to_mercator.TransformPoint(x, y)[:2] for x, y in ((x0, y0), (x0 + span, y0 - span))]
    expected = [corners[0][0], corners[1][0], corners[1][1], corners[0][1]]
    assert footprint == pytest.approx(expected, abs=2 * gt[1])  # within 2 px (measured: ~1 px)

    # the same classes as the GeoTIFF path at every colour block's centre (map coordinates, EPSG:32632)
    reference = detect(str(data["ortho"]), data["model"], tmp_path / "tif")
    centres = [(x0 + (j + 0.5) * BLOCK * GSD, y0 - (i + 0.5) * BLOCK * GSD) for i in range(8) for j in range(8)]
    got = class_at(out, np.array(centres), 32632)
    want = class_at(Path(reference["OUTPUT_RASTER"]), np.array(centres), 32632)
    assert len(np.unique(want)) >= 3
    assert np.mean(got == want) >= 0.95


def test_geopackage_raster_goes_through_gdal(qgis_processing, data, tmp_path):
    gpkg = tmp_path / "ortho.gpkg"
    options = ["TILE_FORMAT=PNG", "RASTER_TABLE=ortho"]
    gdal.Translate(str(gpkg), str(data["ortho"]), format="GPKG", creationOptions=options)
    layer = QgsRasterLayer(f"GPKG:{gpkg}:ortho", "gpkg ortho", "gdal")
    assert layer.isValid()
    results = detect(layer, data["model"], tmp_path / "gpkg")
    reference = detect(str(data["ortho"]), data["model"], tmp_path / "tif")
    got, want = gdal.Open(results["OUTPUT_RASTER"]), gdal.Open(reference["OUTPUT_RASTER"])
    assert got.GetGeoTransform() == pytest.approx(want.GetGeoTransform())
    np.testing.assert_array_equal(got.ReadAsArray(), want.ReadAsArray())
    assert len(np.unique(want.ReadAsArray())) >= 3
