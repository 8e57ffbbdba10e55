"""pmtl:detect_segment_region: the engine.region command it builds, and a real run in the engine process (local
workers) whose outputs QGIS loads styled; cancel keeps the finished rasters."""

from __future__ import annotations

import json

import pytest
from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingException, QgsProject, QgsRasterLayer
from qgis_helpers import CapturingFeedback, ensure_provider

from engine.export.onnx_export import export_onnx
from tests.test_predict import OVERLAP, TILE, BlobNet, describe
from tests.test_region import car_raster, grid_of_rasters

pytestmark = pytest.mark.qgis


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("qgis_region_model") / "blob.onnx"
    export_onnx(BlobNet(), path, describe(), TILE, overlap=OVERLAP, score_thresh=0.5)
    return path


def _algorithm():
    ensure_provider()
    return QgsApplication.processingRegistry().createAlgorithmById("pmtl:detect_segment_region")


def _context() -> QgsProcessingContext:
    ensure_provider()
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    return context


def test_the_command_it_builds(qgis_processing, model, tmp_path):
    rasters = grid_of_rasters(tmp_path / "in", 1, 2)
    layer = QgsRasterLayer(str(rasters[0]), "west")
    QgsProject.instance().addMapLayer(layer)
    alg, context = _algorithm(), _context()
    params = {
        "INPUTS": [layer.id()],
        "FOLDER": str(tmp_path / "in"),
        "MODEL": str(model),
        "WORKERS": 3,
        "RESUME": True,
        "BANDS": "3, 1,2",
        "MAX_GSD_RATIO": 20,
        "OUTPUT": str(tmp_path / "out"),
    }
    assert alg.arguments(params, context, str(tmp_path / "out")) == [
        "--model", str(model), "--input", str(rasters[0]), "--input", str(tmp_path / "in"),
        "--out", str(tmp_path / "out"), "--device", "auto", "--workers", "3", "--resume", "--bands", "3,1,2",
        "--max-gsd-ratio", "20.0",
    ]  # fmt: skip
    params.update(SCHEDULER=" tcp://127.0.0.1:8786 ", RESUME=False, INPUTS=[], BANDS="", MAX_GSD_RATIO=None)
    assert alg.arguments(params, context, "o")[4:] == [
        "--out",
        "o",
        "--device",
        "auto",
        "--scheduler",
        "tcp://127.0.0.1:8786",
    ]
    QgsProject.instance().removeMapLayer(layer.id())
    ok, message = alg.checkParameterValues({"MODEL": str(model), "OUTPUT": "o"}, context)
    assert not ok and "found neither" in message


@pytest.mark.slow
def test_region_job_runs_in_the_engine_process_and_loads_styled_outputs(qgis_processing, model, tmp_path):
    import processing

    grid_of_rasters(tmp_path / "in", 1, 2)
    context, feedback = _context(), CapturingFeedback()
    params = {"FOLDER": str(tmp_path / "in"), "MODEL": str(model), "WORKERS": 1, "OUTPUT": str(tmp_path / "out")}
    results = processing.run("pmtl:detect_segment_region", params, feedback=feedback, context=context)
    assert results["CLASSES"] == str(tmp_path / "out" / "classes.vrt")
    assert results["DETECTIONS"] == str(tmp_path / "out" / "detections.gpkg")
    assert results["REPORT"] == str(tmp_path / "out" / "region.json")
    loading = context.layersToLoadOnCompletion()
    for key in ("CLASSES", "DETECTIONS"):
        assert results[key] in loading
        assert context.layerToLoadOnCompletionDetails(results[key]).postProcessor() is not None
    assert max(feedback.progress_values) == pytest.approx(100.0)
    assert any("2/2 rasters" in line for line in feedback.infos)


@pytest.mark.slow
def test_cancel_keeps_the_finished_rasters(qgis_processing, model, tmp_path):
    import processing

    for k in range(3):
        car_raster(tmp_path / "in" / f"wide{k}.tif", 2048)
    # wide0 done, wide1 running, wide2 not started (one worker): on a fast machine wide1 may finish before the
    # cancel reaches it, wide2 never does
    feedback = CapturingFeedback(cancel_on="1/3 rasters; wide1")
    params = {"FOLDER": str(tmp_path / "in"), "MODEL": str(model), "WORKERS": 1, "OUTPUT": str(tmp_path / "out")}
    with pytest.raises(QgsProcessingException, match="was cancelled; the rasters it finished are kept"):
        processing.run("pmtl:detect_segment_region", params, feedback=feedback, context=_context())
    report = json.loads((tmp_path / "out" / "region.json").read_text())
    assert report["status"] == "cancelled" and report["inputs"][0]["status"] == "done"
    assert (tmp_path / "out" / "classes" / "wide0.tif").is_file()
    assert not list((tmp_path / "out").rglob("*.partial*"))


def test_detect_segment_refuses_a_far_gsd_unless_the_ratio_allows_it(qgis_processing, model, tmp_path):
    import processing
    from osgeo import gdal

    from tests.test_predict import ORIGIN, scene, write_tif

    coarse = write_tif(tmp_path / "coarse.tif", scene(32, 32, []), gt=(ORIGIN[0], 0.9, 0.0, ORIGIN[1], 0.0, -0.9))
    params = {"INPUT": str(coarse), "MODEL": str(model), "OUTPUT_RASTER": str(tmp_path / "seg.tif"),
              "OUTPUT_DETECTIONS": "TEMPORARY_OUTPUT"}  # fmt: skip
    feedback = CapturingFeedback()
    with pytest.raises(QgsProcessingException, match=r"10\.0x apart.*Largest GSD ratio"):
        processing.run("pmtl:detect_segment", params, feedback=feedback, context=_context())
    processing.run("pmtl:detect_segment", {**params, "MAX_GSD_RATIO": 12}, feedback=feedback, context=_context())
    assert gdal.Open(str(tmp_path / "seg.tif")).RasterXSize == 32
