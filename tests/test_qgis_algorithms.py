"""processing.run of the data, inference-side and rendering algorithms on tiny data; bad input → Processing errors."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from osgeo import gdal, ogr, osr
from qgis.core import QgsProcessingException
from qgis.PyQt.QtGui import QImage
from qgis_helpers import CapturingFeedback, label_rgb, run_algorithm, scene, write_geotiff

from engine.core.classes import PALETTE, SEG_CLASSES
from engine.data.isprs import find_isprs_tiles
from engine.predict.outputs import style_class_map
from pmtl_qgis.algorithms.train import Train
from pmtl_qgis.engine_process import ProcessResult

pytestmark = pytest.mark.qgis


def _fails(alg_id: str, parameters: dict) -> str:
    """Run an algorithm that must fail; return the error text Processing reported (and check it is no traceback)."""
    feedback = CapturingFeedback()
    with pytest.raises(QgsProcessingException) as raised:
        run_algorithm(alg_id, parameters, feedback)
    text = "\n".join([*feedback.errors, str(raised.value)])
    assert "Traceback" not in text
    return text


def test_generate_synthetic_returns_a_held_out_tile_and_refuses_to_overwrite(qgis_processing, tmp_path):
    out = tmp_path / "potsdam"
    params = {"DOMAIN": 1, "SEED": 3, "TILES": 2, "TILE_SIZE_M": 4.0, "OUTPUT": str(out)}
    results = run_algorithm("pmtl:generate_synthetic", params)
    assert results["DATASET"] == "potsdam" and results["OUTPUT"] == str(out)
    tiles = {t.name: t for t in find_isprs_tiles("potsdam", out)}
    assert sorted(t.split for t in tiles.values()) == ["train", "val"]
    held_out = next(t for t in tiles.values() if t.split == "val")
    assert results["IMAGE"] == str(held_out.image) and "/2_Ortho_RGB/" in results["IMAGE"]
    assert results["LABEL"] == str(held_out.label) and "/5_Labels_all/" in results["LABEL"]
    assert gdal.Open(results["IMAGE"]).RasterXSize == 80  # 4 m at 5 cm
    message = _fails("pmtl:generate_synthetic", params)
    assert str(out) in message


def test_chip_isprs_raster_from_raster_and_label_layers(qgis_processing, tmp_path):
    image, mask = scene(96)
    image_path = write_geotiff(tmp_path / "ortho.tif", image)
    label_path = write_geotiff(tmp_path / "label.tif", label_rgb(mask))
    out = tmp_path / "chips"
    params = {
        "INPUT": str(image_path),
        "LABEL": str(label_path),
        "SPLIT": 1,
        "SIZE": 32,
        "STRIDE": 32,
        "BAND_NAMES": "nir, red, green",
        "OUTPUT": str(out),
    }
    assert run_algorithm("pmtl:chip_isprs_raster", params) == {"OUTPUT": str(out)}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["splits"] == {"val": 9}  # 96 / 32 = 3 chips a side
    assert manifest["bands"] == ["nir", "red", "green"]
    first = next(c for c in manifest["chips"] if c["window"] == [0, 0, 32, 32])
    # The building block covers x 8..43, y 10..39: clipped to the first chip it is [8, 10, 32, 32).
    assert [8, 10, 32, 32, "building"] in first["boxes"]
    masks = np.load(out / "val" / "masks.npy")
    assert masks.shape == (9, 32, 32) and (masks[first["index"]] == mask[:32, :32]).all()


def test_chip_bad_inputs_are_explained(qgis_processing, tmp_path):
    empty = tmp_path / "not_isprs"
    empty.mkdir()
    message = _fails("pmtl:chip_isprs", {"INPUT_FOLDER": str(empty), "DATASET": 0, "OUTPUT": str(tmp_path / "c")})
    assert str(empty) in message and "top_mosaic_09cm_area" in message
    image, _ = scene(64)
    image_path = write_geotiff(tmp_path / "ortho.tif", image)
    message = _fails(
        "pmtl:chip_isprs_raster", {"INPUT": str(image_path), "OUTPUT": str(tmp_path / "c")}
    )  # an image without its label: a required parameter now, refused by Processing itself
    assert "LABEL: no value specified" in message


def test_detect_segment_rejects_a_file_that_is_not_onnx(qgis_processing, tmp_path):
    image, _ = scene(64)
    image_path = write_geotiff(tmp_path / "ortho.tif", image)
    fake = tmp_path / "model.onnx"
    fake.write_text("not a model")
    params = {"INPUT": str(image_path), "MODEL": str(fake), "OUTPUT_RASTER": str(tmp_path / "c.tif")}
    params["OUTPUT_DETECTIONS"] = str(tmp_path / "d.gpkg")
    message = _fails("pmtl:detect_segment", params)
    assert str(fake) in message and "ONNX" in message
    assert not (tmp_path / "c.tif").exists()


def test_train_checks_the_config_before_starting_the_engine(qgis_processing, tmp_path):
    chips = tmp_path / "chips"
    chips.mkdir()
    params = {"SEG_DATA": str(chips), "OVERRIDES": "optim.epochz=3", "OUTPUT": str(tmp_path / "run")}
    start = time.monotonic()
    message = _fails("pmtl:train", params)
    assert "config key 'optim.epochz' is unknown" in message
    assert time.monotonic() - start < 5  # no PyTorch process was started for a typo
    assert not (tmp_path / "run").exists()


def test_train_failure_in_the_engine_process_shows_its_error_lines(qgis_app, tmp_path):
    tail = ["loading data", "error: chip dataset '/x': expected manifest.json, found none", "exit"]
    with pytest.raises(QgsProcessingException) as raised:
        Train()._results(ProcessResult(returncode=2, canceled=False, tail=tail), tmp_path, CapturingFeedback())
    assert str(raised.value) == "Training failed (exit code 2):\n" + tail[1]
    tail = ["Traceback (most recent call last):", "ModuleNotFoundError: No module named 'torchvision'"]
    with pytest.raises(QgsProcessingException) as raised:
        Train()._results(ProcessResult(returncode=1, canceled=False, tail=tail), tmp_path, CapturingFeedback())
    assert "cannot be imported: torchvision." in str(raised.value) and "pip install" in str(raised.value)


def test_cancelled_training_says_truthfully_what_is_kept(qgis_app, tmp_path):
    feedback = CapturingFeedback()
    with pytest.raises(QgsProcessingException, match="before the end of its first epoch: no checkpoint was written"):
        Train()._results(ProcessResult(returncode=130, canceled=True), tmp_path, feedback)
    (tmp_path / "last.pt").write_bytes(b"checkpoint")
    events = [{"event": "metrics", "epoch": 2, "seg_miou": 0.5}]
    results = Train()._results(ProcessResult(returncode=130, canceled=True, events=events), tmp_path, feedback)
    assert results["CHECKPOINT"] == results["LAST_CHECKPOINT"] == str(tmp_path / "last.pt")
    assert any("the checkpoint of epoch 2 is kept" in w for w in feedback.warnings)
    tail = ["error: chip dataset '/x': expected manifest.json, found none"]
    error = [{"event": "error", "message": "chip dataset '/x': expected manifest.json, found none"}]
    with pytest.raises(QgsProcessingException) as raised:
        Train()._results(ProcessResult(returncode=2, canceled=False, events=error, tail=tail), tmp_path, feedback)
    assert str(raised.value) == "Training failed (exit code 2):\nchip dataset '/x': expected manifest.json, found none"


def _write_boxes(path, rect: tuple[float, float, float, float]) -> None:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32632)
    dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = dataset.CreateLayer("detections", srs, ogr.wkbPolygon)
    for name, kind in (("class", ogr.OFTString), ("class_id", ogr.OFTInteger), ("score", ogr.OFTReal)):
        layer.CreateField(ogr.FieldDefn(name, kind))
    feature = ogr.Feature(layer.GetLayerDefn())
    x0, y0, x1, y1 = rect
    feature.SetGeometry(ogr.CreateGeometryFromWkt(f"POLYGON(({x0} {y0},{x1} {y0},{x1} {y1},{x0} {y1},{x0} {y0}))"))
    feature.SetField("class", "car")
    feature.SetField("class_id", 2)
    feature.SetField("score", 0.91)
    layer.CreateFeature(feature)
    dataset = None


def test_render_map_draws_class_colours_and_boxes(qgis_processing, tmp_path):
    ortho = write_geotiff(tmp_path / "ortho.tif", np.full((3, 100, 200), 128, np.uint8), gsd=1.0)
    classes = write_geotiff(tmp_path / "classes.tif", np.ones((1, 100, 200), np.uint8), gsd=1.0)  # all "roof"
    dataset = gdal.Open(str(classes), gdal.GA_Update)  # the class names and colours of a model, as predict writes
    style_class_map(dataset.GetRasterBand(1), ["water", "roof"], [(0, 0, 200), (200, 0, 0)])
    dataset = None
    boxes = tmp_path / "boxes.gpkg"
    _write_boxes(boxes, (500020.0, 5399920.0, 500080.0, 5399960.0))  # x 20..80 px, y 40..80 px
    out = tmp_path / "map.png"
    params = {"INPUT": str(ortho), "CLASS_MAP": str(classes), "DETECTIONS": str(boxes), "OPACITY": 1.0}
    run_algorithm("pmtl:render_map", {**params, "WIDTH": 200, "OUTPUT": str(out)})
    image = QImage(str(out))
    assert image.width() == 200 and image.height() > 100  # the map keeps the ortho's aspect; legend below
    assert image.pixelColor(150, 20).getRgb()[:3] == (200, 0, 0)  # "roof" in its colour, opaque
    car = PALETTE[SEG_CLASSES.index("car")]  # a detection class without a model: the fallback (ISPRS name)
    outline = [image.pixelColor(20, y).getRgb()[:3] for y in range(50, 70)]
    assert car in outline  # the car box outline on its left edge
    legend = {image.pixelColor(x, y).getRgb()[:3] for x in range(200) for y in range(100, image.height())}
    assert {(0, 0, 200), (200, 0, 0), car} <= legend  # class and box swatches


def test_cancel_stops_an_in_process_engine_job_with_a_clear_message(qgis_processing, tmp_path):
    feedback = CapturingFeedback(cancel_on="potsdam: 3 tiles")  # the engine's first progress message
    params = {"DOMAIN": 1, "TILES": 3, "TILE_SIZE_M": 4.0, "OUTPUT": str(tmp_path / "synth")}
    with pytest.raises(QgsProcessingException) as raised:
        run_algorithm("pmtl:generate_synthetic", params, feedback)
    assert str(raised.value) == "Generate synthetic ISPRS-like data was cancelled; no output was written."
    assert list((tmp_path / "synth").rglob("*.tif")) == []  # the engine checks the cancel flag before each tile
