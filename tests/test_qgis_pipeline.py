"""The example model (generate → chip → train → export → detect) through processing.run and qgis_process,
the outputs it chains, and the plugin installed from its zip into a temporary QGIS profile."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import (
    QgsFeature,
    QgsGeometry,
    QgsProcessingModelAlgorithm,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis_helpers import (
    PIPELINE_MODEL,
    VENV_PYTHON,
    CapturingFeedback,
    build_pipeline_model,
    ensure_provider,
    installed_plugin_env,
    qgis_process,
    run_algorithm,
)

from engine.core.classes import SEG_CLASSES

pytestmark = pytest.mark.qgis

TINY = {"TILES": 2, "TILE_SIZE_M": 12.0, "CHIP_SIZE": 64, "EPOCHS": 1}
TINY_TRAINING = (
    "data.num_workers=0 data.batch_size=2 data.max_val_chips=2 optim.iters_per_epoch=1 optim.warmup_iters=1 "
    "runtime.device=cpu"
)
MODEL_OUTPUTS = (
    "generate:dataset",
    "chip:chips",
    "train:checkpoints",
    "export:onnx_model",
    "detect:class_map",
    "render:map",
)


def _model_destinations(folder: Path) -> dict[str, str]:
    return {
        "generate:dataset": str(folder / "dataset"),
        "chip:chips": str(folder / "chips"),
        "train:checkpoints": str(folder / "checkpoints"),
        "export:onnx_model": str(folder / "model.onnx"),
        "detect:class_map": str(folder / "classes.tif"),
        "detect:detections": str(folder / "detections.gpkg"),
        "render:map": str(folder / "map.png"),
    }


@pytest.fixture(scope="module")
def pipeline(qgis_processing, tmp_path_factory) -> dict[str, str]:
    """The shipped .model3 run once through processing.run with tiny sizes; its outputs feed the other tests."""
    folder = tmp_path_factory.mktemp("pipeline")
    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(str(PIPELINE_MODEL))
    feedback = CapturingFeedback()
    results = run_algorithm(model, {**TINY, "TRAIN_OVERRIDES": TINY_TRAINING, **_model_destinations(folder)}, feedback)
    return results


def test_shipped_model_is_the_documented_chain(qgis_processing):
    ensure_provider()
    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(str(PIPELINE_MODEL))
    expected = build_pipeline_model()
    chain = {cid: child.algorithmId() for cid, child in model.childAlgorithms().items()}
    assert chain == {cid: child.algorithmId() for cid, child in expected.childAlgorithms().items()}
    assert chain == {
        "generate": "pmtl:generate_synthetic",
        "chip": "pmtl:chip_isprs",
        "train": "pmtl:train",
        "export": "pmtl:export_onnx",
        "detect": "pmtl:detect_segment",
        "render": "pmtl:render_map",
    }
    assert model.childAlgorithm("export").parameterSources()["CHECKPOINT"][0].outputChildId() == "train"
    assert model.childAlgorithm("detect").parameterSources()["MODEL"][0].outputChildId() == "export"
    assert {p.name() for p in model.destinationParameterDefinitions()} == {*MODEL_OUTPUTS, "detect:detections"}


def test_model_runs_end_to_end_and_keeps_georeferencing(pipeline):
    for name in MODEL_OUTPUTS:
        assert Path(pipeline[name]).exists(), name
    assert (Path(pipeline["train:checkpoints"]) / "best.pt").is_file()
    image = pipeline["CHILD_RESULTS"]["generate"]["IMAGE"]
    source, classes = gdal.Open(image), gdal.Open(pipeline["detect:class_map"])
    assert classes.GetGeoTransform() == source.GetGeoTransform()
    assert classes.GetProjection() == source.GetProjection()
    assert (classes.RasterXSize, classes.RasterYSize) == (source.RasterXSize, source.RasterYSize)
    values = np.unique(classes.ReadAsArray())
    assert set(values.tolist()) <= set(range(6))  # a class everywhere: no AOI, no nodata
    detections = QgsVectorLayer(pipeline["detect:detections"], "d", "ogr")
    assert detections.isValid()
    assert {"class", "class_id", "score"} <= set(detections.fields().names())


def test_detect_segment_with_aoi_styles_what_it_loads(pipeline, tmp_path):
    import processing

    image = pipeline["CHILD_RESULTS"]["generate"]["IMAGE"]
    raster = QgsRasterLayer(image, "ortho")
    extent = raster.extent()
    aoi = QgsVectorLayer(f"Polygon?crs={raster.crs().authid()}", "aoi", "memory")
    feature = QgsFeature()
    left = QgsRectangle(extent.xMinimum(), extent.yMinimum(), extent.center().x(), extent.yMaximum())
    feature.setGeometry(QgsGeometry.fromRect(left))
    aoi.dataProvider().addFeature(feature)
    project = QgsProject.instance()
    project.removeAllMapLayers()
    params = {
        "INPUT": image,
        "MODEL": pipeline["export:onnx_model"],
        "AOI": aoi,
        "OUTPUT_RASTER": str(tmp_path / "classes.tif"),
        "OUTPUT_DETECTIONS": str(tmp_path / "detections.gpkg"),
    }
    feedback = CapturingFeedback()
    results = processing.runAndLoadResults("pmtl:detect_segment", params, feedback=feedback)
    summary = json.loads(results["SUMMARY"])
    assert summary["provider"] == "CPUExecutionProvider"
    classes = gdal.Open(str(tmp_path / "classes.tif")).ReadAsArray()
    width = classes.shape[1]
    assert (classes[:, : width // 2 - 1] < 6).all()  # inside the AOI: classes
    assert (classes[:, width // 2 + 1 :] == 255).all()  # outside: nodata
    loaded = {layer.source().split("|")[0]: layer for layer in project.mapLayers().values()}
    renderer = loaded[str(tmp_path / "classes.tif")].renderer()
    assert renderer.type() == "paletted" and [c.label for c in renderer.classes()] == list(SEG_CLASSES)
    boxes = loaded[str(tmp_path / "detections.gpkg")]
    assert boxes.renderer().type() == "categorizedSymbol" and boxes.labelsEnabled()
    project.removeAllMapLayers()


def test_evaluate_writes_the_report_and_returns_its_numbers(pipeline, tmp_path):
    params = {
        "CHECKPOINT": str(Path(pipeline["train:checkpoints"]) / "best.pt"),
        "DET_DATA": pipeline["chip:chips"],
        "SEG_DATA": pipeline["chip:chips"],
        "MAX_CHIPS": 2,
        "OUTPUT": str(tmp_path / "eval.json"),
    }
    results = run_algorithm("pmtl:evaluate", params)
    report = json.loads((tmp_path / "eval.json").read_text())
    assert results["SEG_MIOU"] == pytest.approx(report["seg_miou"])
    assert results["DET_MAP"] == pytest.approx(report["det_map"])
    assert 0.0 <= results["SEG_OA"] <= 1.0


def test_qgis_process_enables_the_packaged_plugin_and_runs_it(pipeline, tmp_path):
    env = installed_plugin_env(tmp_path, VENV_PYTHON)
    listing = qgis_process(["list"], env)
    for name in ("generate_synthetic", "chip_isprs", "train", "export_onnx", "detect_segment", "evaluate"):
        assert f"pmtl:{name}" in listing.stdout
    args = ["DOMAIN=1", "TILES=2", "TILE_SIZE_M=4", f"OUTPUT={tmp_path / 's'}"]
    synth = qgis_process(["--json", "run", "pmtl:generate_synthetic", "--", *args], env)
    assert synth.returncode == 0, synth.stdout + synth.stderr
    image = json.loads(synth.stdout)["results"]["IMAGE"]
    assert Path(image).is_file() and "2_Ortho_RGB" in image
    image = pipeline["CHILD_RESULTS"]["generate"]["IMAGE"]
    detect = qgis_process(
        [
            "--json",
            "run",
            "pmtl:detect_segment",
            "--",
            f"INPUT={image}",
            f"MODEL={pipeline['export:onnx_model']}",
            f"OUTPUT_RASTER={tmp_path / 'c.tif'}",
            f"OUTPUT_DETECTIONS={tmp_path / 'd.gpkg'}",
        ],
        env,
    )
    assert detect.returncode == 0, detect.stdout + detect.stderr
    results = json.loads(detect.stdout)["results"]
    assert results["OUTPUT_RASTER"] == str(tmp_path / "c.tif")
    expected = gdal.Open(pipeline["detect:class_map"]).ReadAsArray()
    assert (gdal.Open(str(tmp_path / "c.tif")).ReadAsArray() == expected).all()  # same model, same answer


def test_qgis_process_without_torch_says_what_to_install(tmp_path):
    env = installed_plugin_env(tmp_path, None)  # QGIS's own Python: no torch, no onnxruntime
    run = qgis_process(
        ["run", "pmtl:export_onnx", "--", f"CHECKPOINT={tmp_path / 'x.pt'}", f"OUTPUT={tmp_path / 'x.onnx'}"], env
    )
    text = run.stdout + run.stderr
    assert run.returncode != 0
    assert "cannot be imported: torch" in text and "pip install -r" in text and "PMTL_PYTHON=" in text
    assert "Traceback" not in text


@pytest.mark.slow
def test_qgis_process_runs_the_example_model(tmp_path):
    env = installed_plugin_env(tmp_path, VENV_PYTHON)
    values = {**TINY, "DOMAIN": 1, "TRAIN_OVERRIDES": TINY_TRAINING, **_model_destinations(tmp_path)}
    args = [f"{name}={value}" for name, value in values.items()]
    run = qgis_process(["--json", "run", str(PIPELINE_MODEL), "--", *args], env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(run.stdout)["results"]
    assert Path(results["export:onnx_model"]).is_file()
    classes = gdal.Open(results["detect:class_map"])
    assert classes.RasterXSize == 240  # a 12 m Potsdam-like tile at 5 cm
