"""engine.predict at the sizes real data comes in (issue 18): a 6000 × 6000 tile at 5 cm with a 20 cm model (a
resampled output larger than GDAL's block cache), and rasters whose GSD is far from the model's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr

from engine.core.classes import PALETTE
from engine.core.errors import InputError
from engine.export.onnx_export import export_onnx
from engine.predict import predict_raster
from engine.predict.__main__ import main as predict_main
from tests.test_predict import CAR, IMPERVIOUS, ORIGIN, BlobNet, describe

gdal.UseExceptions()

MODEL_GSD = 0.20


@pytest.fixture(scope="module")
def map_model(tmp_path_factory) -> Path:
    """The known-answer blob network as a 20 cm model (the demo's map model's GSD), 128 px tiles."""
    path = tmp_path_factory.mktemp("map_model") / "map20cm.onnx"
    meta = {**describe(), "gsd": MODEL_GSD}
    export_onnx(BlobNet(), path, meta, 128, overlap=16, score_thresh=0.5)
    return path


def sparse_ortho(path: Path, size: int, gsd: float, bright: list[tuple[int, int, int]]) -> Path:
    """A ``size``² 3-band ortho at ``gsd`` m, dark except bright squares (x, y, side), written sparsely (unwritten
    blocks read as 0) so a 6000² tile costs the test almost nothing to make."""
    ds = gdal.GetDriverByName("GTiff").Create(
        str(path), size, size, 3, gdal.GDT_Byte, ["TILED=YES", "SPARSE_OK=TRUE", "COMPRESS=DEFLATE"]
    )
    ds.SetGeoTransform((ORIGIN[0], gsd, 0.0, ORIGIN[1], 0.0, -gsd))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32632)
    ds.SetProjection(srs.ExportToWkt())
    for x, y, side in bright:
        block = np.full((3, side, side), 250, np.uint8)
        ds.WriteRaster(x, y, side, side, block.tobytes(), band_list=[1, 2, 3])
    ds = None
    return path


@pytest.mark.slow
def test_potsdam_sized_tile_with_a_20cm_model_writes_its_class_map(map_model, tmp_path):
    # 6000² px at 5 cm (an ISPRS Potsdam tile); a 20 m square of "car" pixels at (4000, 5000): its class map on the
    # input grid is 36 Mpx, far more than the 32 MB block cache predict gives GDAL
    ortho = sparse_ortho(tmp_path / "potsdam.tif", 6000, 0.05, [(4000, 5000, 400)])
    summary = predict_raster(map_model, ortho, tmp_path / "seg.tif", batch_size=8)
    assert any("resampled" in w for w in summary.warnings)
    seg = gdal.Open(str(tmp_path / "seg.tif"))
    assert (seg.RasterXSize, seg.RasterYSize) == (6000, 6000)
    assert seg.GetGeoTransform() == (ORIGIN[0], 0.05, 0.0, ORIGIN[1], 0.0, -0.05)
    band = seg.GetRasterBand(1)
    assert band.GetNoDataValue() == 255
    assert band.GetRasterColorTable().GetColorEntry(CAR)[:3] == tuple(PALETTE[CAR])
    inside = band.ReadAsArray(4100, 5100, 200, 200)
    outside = band.ReadAsArray(1000, 1000, 200, 200)
    assert (inside == CAR).all() and (outside == IMPERVIOUS).all()
    assert not list(tmp_path.glob(".*partial*"))


def test_far_gsd_is_refused_with_both_gsds_and_the_override(map_model, tmp_path):
    landsat = sparse_ortho(tmp_path / "landsat.tif", 64, 30.0, [])
    with pytest.raises(InputError) as caught:
        predict_raster(map_model, landsat, tmp_path / "seg.tif")
    message = str(caught.value)
    assert "landsat.tif" in message and "30.000 m" in message and "0.200 m" in message
    assert "--max-gsd-ratio" in message and "\n" not in message
    assert not (tmp_path / "seg.tif").exists()
    # just inside the limit (8x: 1.6 m) it runs, resampled; the override lets a 10x raster through
    predict_raster(map_model, sparse_ortho(tmp_path / "ok.tif", 64, 1.6, []), tmp_path / "ok_seg.tif")
    coarse = sparse_ortho(tmp_path / "coarse.tif", 32, 2.0, [])
    with pytest.raises(InputError, match=r"10\.0x apart"):
        predict_raster(map_model, coarse, tmp_path / "c_seg.tif")
    predict_raster(map_model, coarse, tmp_path / "c_seg.tif", max_gsd_ratio=12)
    assert gdal.Open(str(tmp_path / "c_seg.tif")).RasterXSize == 32


def test_far_gsd_cli_is_one_line(map_model, tmp_path, capsys):
    landsat = sparse_ortho(tmp_path / "landsat.tif", 64, 30.0, [])
    code = predict_main(["--model", str(map_model), "--input", str(landsat), "--out-raster", str(tmp_path / "s.tif")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: input raster") and len(err.splitlines()) == 1
    assert "--max-gsd-ratio" in err
