"""QGIS as people click it: empty optional values in every form QGIS passes them (dialog, Batch Processing,
modeler), errors and warnings in the dialog's words, band checks, legible output layer names, labels from memory
layers kept with the chips, and Train running the tested command builder."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import (
    QgsFeature,
    QgsGeometry,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingModelAlgorithm,
    QgsProcessingOutputLayerDefinition,
    QgsProcessingParameterDefinition,
    QgsProject,
    QgsProperty,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QVariant
from qgis_helpers import (
    MANY_RASTERS_MODEL,
    REPO,
    VENV_PYTHON,
    CapturingFeedback,
    build_many_rasters_model,
    ensure_provider,
    installed_plugin_env,
    label_rgb,
    qgis_process,
    run_algorithm,
    scene,
    tiny_onnx_model,
    write_geotiff,
)

from pmtl_qgis.algorithms.base import is_unset

pytestmark = pytest.mark.qgis

EMPTY_FORMS = {
    "missing": ...,
    "None": None,
    "empty string": "",
    "blank string": "  ",
    "NULL": QVariant(),
    "output definition with an empty sink": QgsProcessingOutputLayerDefinition(""),
    "empty property": QgsProperty.fromValue(""),
}


def _algorithms() -> list:
    return list(ensure_provider().algorithms())


def _fails(alg_id: str, parameters: dict, feedback: CapturingFeedback | None = None) -> str:
    feedback = feedback or CapturingFeedback()
    with pytest.raises(QgsProcessingException) as raised:
        run_algorithm(alg_id, parameters, feedback)
    text = "\n".join([*feedback.errors, str(raised.value)])
    assert "Traceback" not in text
    assert "--" not in text, text  # the dialog has labels, not command-line flags
    return text


def _described(path: Path, names: list[str]) -> Path:
    """Give the raster's bands descriptions (what the synthetic twin and many producers write)."""
    dataset = gdal.Open(str(path), gdal.GA_Update)
    for index, name in enumerate(names, start=1):
        dataset.GetRasterBand(index).SetDescription(name)
    dataset = None
    return path


@pytest.fixture(scope="module")
def model(qgis_processing, tmp_path_factory) -> Path:
    """A tiny R-G-B model (bands red, green, blue; 0.09 m) through the real exporter."""
    return tiny_onnx_model(tmp_path_factory.mktemp("model") / "rgb.onnx")


# Empty values --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", sorted(EMPTY_FORMS))
def test_every_algorithm_takes_every_empty_form_of_an_optional_value_as_unset(qgis_processing, form):
    algorithms = _algorithms()
    assert {a.name() for a in algorithms} >= {"detect_segment", "chip_isprs", "train", "export_onnx"}
    for algorithm in algorithms:
        for definition in algorithm.parameterDefinitions():
            if not definition.flags() & QgsProcessingParameterDefinition.FlagOptional:
                continue
            name = definition.name()
            parameters = {} if EMPTY_FORMS[form] is ... else {name: EMPTY_FORMS[form]}
            assert is_unset(parameters, name), (algorithm.name(), name, form)
            assert algorithm._empty_optional(parameters, name) or form == "missing", (algorithm.name(), name)


def test_given_values_are_not_unset(qgis_processing):
    for value in ("x", 0, 0.0, False, QgsProcessingOutputLayerDefinition("/out/probs.tif"), QVariant(3)):
        assert not is_unset({"P": value}, "P"), value


def test_batch_rows_with_empty_optional_outputs_run(qgis_processing, tmp_path, model):
    """What the Batch Processing panel passes for the hidden Class probabilities / Class polygons columns."""
    for name in ("a", "b"):
        raster = write_geotiff(tmp_path / f"{name}.tif", scene(64)[0])
        row = {
            "INPUT": str(raster),
            "MODEL": str(model),
            "OUTPUT_RASTER": str(tmp_path / f"{name}_classes.tif"),
            "OUTPUT_DETECTIONS": str(tmp_path / f"{name}_detections.gpkg"),
            "OUTPUT_PROBS": QgsProcessingOutputLayerDefinition(""),
            "OUTPUT_POLYGONS": QgsProcessingOutputLayerDefinition(""),
            "OVERLAP": QVariant(),
            "VALUE_MAX": "",
        }
        results = run_algorithm("pmtl:detect_segment", row)
        assert Path(results["OUTPUT_RASTER"]).is_file()
        assert "OUTPUT_PROBS" not in results and "OUTPUT_POLYGONS" not in results


def test_qgis_process_takes_empty_optional_values_as_unset(qgis_processing, tmp_path, model):
    env = installed_plugin_env(tmp_path, VENV_PYTHON)
    raster = write_geotiff(tmp_path / "ortho.tif", scene(64)[0])
    outputs = [f"OUTPUT_RASTER={tmp_path / 'c.tif'}", f"OUTPUT_DETECTIONS={tmp_path / 'd.gpkg'}"]
    empty = ["OUTPUT_PROBS=", "OUTPUT_POLYGONS=", "VALUE_MAX=", "BANDS="]
    args = [f"INPUT={raster}", f"MODEL={model}", *outputs, *empty]
    run = qgis_process(["--json", "run", "pmtl:detect_segment", "--", *args], env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    results = json.loads(run.stdout)["results"]
    assert Path(results["OUTPUT_RASTER"]).is_file() and not results.get("OUTPUT_PROBS")


# Shipped graphical models -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((REPO / "models" / "examples").glob("*.model3")), ids=lambda p: p.stem)
def test_every_shipped_model_validates_in_the_modeler(qgis_processing, path):
    ensure_provider()
    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(str(path))
    assert model.validate() == (True, [])


def test_the_many_rasters_model_detects_over_a_mosaic_of_the_rasters(qgis_processing, tmp_path, model):
    shipped = QgsProcessingModelAlgorithm()
    assert shipped.fromFile(str(MANY_RASTERS_MODEL))
    expected = build_many_rasters_model()
    assert {c: a.algorithmId() for c, a in shipped.childAlgorithms().items()} == {
        c: a.algorithmId() for c, a in expected.childAlgorithms().items()
    }
    image = scene(64)[0]
    west = write_geotiff(tmp_path / "west.tif", image)
    east = write_geotiff(tmp_path / "east.tif", image, origin=(500000.0 + 64 * 0.09, 5400000.0))
    outputs = {"detect:class_map": str(tmp_path / "classes.tif"), "detect:detections": str(tmp_path / "boxes.gpkg")}
    params = {"RASTERS": [str(west), str(east)], "MODEL": str(model), **outputs}
    results = run_algorithm(shipped, params)
    classes = gdal.Open(results["detect:class_map"])
    assert (classes.RasterXSize, classes.RasterYSize) == (128, 64)  # both rasters, side by side
    assert QgsVectorLayer(results["detect:detections"], "d", "ogr").isValid()


# Errors and warnings in the dialog's words ---------------------------------------------------------------------


def test_processing_errors_raised_by_the_plugin_name_no_command_line_flags():
    """Every message literal in a ``raise QgsProcessingException(...)`` of the plugin (engine messages are rendered
    by the base class, see the tests below)."""
    found = []
    for path in sorted((REPO / "pmtl_qgis").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                texts = [
                    n.value for n in ast.walk(node.exc) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                ]
                found += [f"{path.name}:{node.lineno}: {t}" for t in texts if "--" in t]
    assert found == []


def test_a_nir_r_g_raster_given_to_an_rgb_model_fails_naming_both_band_lists(qgis_processing, tmp_path, model):
    raster = _described(write_geotiff(tmp_path / "irrg.tif", scene(64)[0]), ["nir", "red", "green"])
    params = {"INPUT": str(raster), "MODEL": str(model), "OUTPUT_RASTER": str(tmp_path / "c.tif"),
              "OUTPUT_DETECTIONS": str(tmp_path / "d.gpkg")}  # fmt: skip
    message = _fails("pmtl:detect_segment", params)
    assert "['nir', 'red', 'green']" in message and "['red', 'green', 'blue']" in message
    assert "'Bands (model order)'" in message and "e.g. 2,3,?" in message and "no band named ['blue']" in message
    assert not (tmp_path / "c.tif").exists()
    # mapped by the user (their choice): it runs, with the mismatch as a warning
    feedback = CapturingFeedback()
    run_algorithm("pmtl:detect_segment", {**params, "BANDS": [2, 3, 1]}, feedback)
    assert any("['red', 'green', 'nir']" in w for w in feedback.warnings), feedback.warnings


def test_a_partial_mtl_model_takes_the_bands_of_each_training_dataset(qgis_processing, tmp_path):
    """Detection on R-G-B Potsdam chips, segmentation on NIR-R-G Vaihingen chips: both kinds of raster are the
    model's; a raster of neither is refused naming both."""
    datasets = {"det": {"dataset": "potsdam", "gsd": 0.05, "bands": ["red", "green", "blue"]},
                "seg": {"dataset": "vaihingen", "gsd": 0.09, "bands": ["nir", "red", "green"]}}  # fmt: skip
    model = tiny_onnx_model(tmp_path / "mtl.onnx", datasets=datasets)
    outputs = {"OUTPUT_RASTER": str(tmp_path / "c.tif"), "OUTPUT_DETECTIONS": str(tmp_path / "d.gpkg")}
    irrg = _described(write_geotiff(tmp_path / "irrg.tif", scene(64)[0]), ["nir", "red", "green"])
    run_algorithm("pmtl:detect_segment", {"INPUT": str(irrg), "MODEL": str(model), **outputs})
    other = _described(write_geotiff(tmp_path / "other.tif", scene(64)[0]), ["green", "red", "nir"])
    message = _fails("pmtl:detect_segment", {"INPUT": str(other), "MODEL": str(model), **outputs})
    assert "was trained on ['red', 'green', 'blue'] or ['nir', 'red', 'green']" in message


def test_a_wrong_band_mapping_is_named_by_its_label(qgis_processing, tmp_path, model):
    raster = write_geotiff(tmp_path / "ortho.tif", scene(64)[0])
    params = {"INPUT": str(raster), "MODEL": str(model), "BANDS": [1, 2], "OUTPUT_RASTER": str(tmp_path / "c.tif"),
              "OUTPUT_DETECTIONS": str(tmp_path / "d.gpkg")}  # fmt: skip
    assert "'Bands (model order)' [1, 2]: expected 3 band numbers" in _fails("pmtl:detect_segment", params)


def test_unnamed_bands_and_resampling_are_warnings_in_the_log_once(qgis_processing, tmp_path, model):
    raster = write_geotiff(tmp_path / "ortho.tif", scene(64)[0], gsd=0.2)  # the model is at 0.09 m
    feedback = CapturingFeedback()
    params = {"INPUT": str(raster), "MODEL": str(model), "OUTPUT_RASTER": str(tmp_path / "c.tif"),
              "OUTPUT_DETECTIONS": str(tmp_path / "d.gpkg")}  # fmt: skip
    results = run_algorithm("pmtl:detect_segment", params, feedback)
    resampled = [w for w in feedback.warnings if "resampled" in w]
    assert len(resampled) == 1 and "0.200 m" in resampled[0]
    assert not any("bands" in w for w in feedback.warnings)  # a 3-band GeoTIFF says red, green, blue
    assert not [line for line in feedback.infos if line.startswith("Summary") and "resampled" in line]
    assert json.loads(results["SUMMARY"])["warnings"] == resampled


def test_a_chip_dataset_in_the_way_names_the_overwrite_checkbox(qgis_processing, tmp_path):
    raster = write_geotiff(tmp_path / "ortho.tif", scene(64)[0])
    params = {"IMAGES": [str(raster)], "SIZE": 32, "STRIDE": 32, "OUTPUT": str(tmp_path / "chips")}
    run_algorithm("pmtl:chip_unlabelled", params)
    message = _fails("pmtl:chip_unlabelled", params)
    assert "set 'Overwrite an existing chip dataset' to replace it" in message


def test_chip_band_names_that_contradict_the_rasters_own_are_refused(qgis_processing, tmp_path):
    image, mask = scene(64)
    raster = _described(write_geotiff(tmp_path / "irrg.tif", image), ["nir", "red", "green"])
    label = write_geotiff(tmp_path / "label.tif", label_rgb(mask))
    params = {"INPUT": str(raster), "LABEL": str(label), "SIZE": 32, "STRIDE": 32, "BAND_NAMES": "red, green, blue",
              "OUTPUT": str(tmp_path / "chips")}  # fmt: skip
    message = _fails("pmtl:chip_isprs_raster", params)
    assert (
        "its bands are ['nir', 'red', 'green']" in message
        and "the band names given are ['red', 'green', 'blue']" in message
    )
    assert "in 'Band names', e.g. nir,red,green" in message
    run_algorithm("pmtl:chip_isprs_raster", {**params, "BAND_NAMES": ""})  # no names given: the raster's own are kept
    assert json.loads((tmp_path / "chips" / "manifest.json").read_text())["bands"] == ["nir", "red", "green"]


def test_16_bit_imagery_without_a_value_maximum_warns_with_its_range(qgis_processing, tmp_path):
    data = np.random.default_rng(0).integers(100, 6616, (3, 64, 64)).astype(np.uint16)
    data[0, 0, 0] = 6615
    raster = write_geotiff(tmp_path / "ortho16.tif", data)
    feedback = CapturingFeedback()
    params = {"IMAGES": [str(raster)], "SIZE": 32, "STRIDE": 32, "OUTPUT": str(tmp_path / "chips")}
    run_algorithm("pmtl:chip_unlabelled", params, feedback)
    warning = next(w for w in feedback.warnings if "uint16 values" in w)
    assert "..6615 but are scaled by a maximum of 65535" in warning and "10 % of the range" in warning
    assert "set 'Value scaling maximum (uint16 imagery)' to" in warning and "--" not in warning
    feedback = CapturingFeedback()
    run_algorithm("pmtl:chip_unlabelled", {**params, "VALUE_MAX": 8191, "OVERWRITE": True}, feedback)
    assert not any("uint16 values" in w for w in feedback.warnings)


def test_a_predict_warning_names_the_dialog_field_not_the_python_keyword(qgis_processing, tmp_path, model):
    """The engine's Python API names ``'value_max'`` when nobody else renders its warnings; in QGIS (a handler on
    the engine logger) the dialog's label stands there."""
    data = (scene(64)[0].astype(np.uint16) * 16).astype(np.uint16)  # uint16 imagery, the model was trained on uint8
    feedback = CapturingFeedback()
    params = {"INPUT": str(write_geotiff(tmp_path / "ortho16.tif", data)), "MODEL": str(model),
              "OUTPUT_RASTER": str(tmp_path / "c.tif"), "OUTPUT_DETECTIONS": str(tmp_path / "d.gpkg")}  # fmt: skip
    run_algorithm("pmtl:detect_segment", params, feedback)
    warning = next(w for w in feedback.warnings if "uint16" in w)
    assert "(set 'Input value maximum' to override)" in warning and "value_max" not in warning, warning


# Legible results -----------------------------------------------------------------------------------------------


def test_output_layers_are_named_after_their_input(qgis_processing, tmp_path, model):
    import processing

    raster = write_geotiff(tmp_path / "top_potsdam_2_10.tif", scene(64)[0])
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    outputs = {
        "OUTPUT_RASTER": QgsProcessingOutputLayerDefinition(str(tmp_path / "c.tif"), QgsProject.instance()),
        "OUTPUT_DETECTIONS": QgsProcessingOutputLayerDefinition(str(tmp_path / "d.gpkg"), QgsProject.instance()),
    }
    params = {"INPUT": str(raster), "MODEL": str(model), **outputs}
    results = processing.run("pmtl:detect_segment", params, context=context, feedback=CapturingFeedback())
    names = {key: context.layerToLoadOnCompletionDetails(results[key]).name for key in outputs}
    assert names == {
        "OUTPUT_RASTER": "Class map — top_potsdam_2_10",
        "OUTPUT_DETECTIONS": "Detections — top_potsdam_2_10",
    }


def test_labels_from_a_memory_layer_are_copied_into_the_chip_dataset(qgis_processing, tmp_path):
    image = write_geotiff(tmp_path / "ortho.tif", np.full((3, 64, 64), 90, np.uint8), gsd=1.0)
    layer = QgsVectorLayer("Polygon?crs=EPSG:32632&field=kind:string", "sheds", "memory")
    feature = QgsFeature(layer.fields())
    feature.setAttribute("kind", "shed")
    feature.setGeometry(
        QgsGeometry.fromWkt("POLYGON((500010 5399990, 500030 5399990, 500030 5399970, 500010 5399970, 500010 5399990))")
    )
    layer.dataProvider().addFeatures([feature])
    out = tmp_path / "chips"
    params = {"IMAGES": [str(image)], "POLYGONS": layer, "CLASS_FIELD": "kind", "TASK": 0, "SIZE": 32,
              "STRIDE": 32, "VAL_FRACTION": 0.0, "OUTPUT": str(out)}  # fmt: skip
    run_algorithm("pmtl:chip_own_labels", params)
    source = json.loads((out / "manifest.json").read_text())["labels"]["source"]
    path = Path(source.split("|")[0])
    assert path.parent == (out / "labels").resolve() and path.is_file()
    copied = QgsVectorLayer(source, "copy", "ogr")
    assert [f["kind"] for f in copied.getFeatures()] == ["shed"]


# Train runs the tested command builder -------------------------------------------------------------------------


def test_train_runs_the_command_training_command_builds(qgis_processing, tmp_path, monkeypatch):
    from pmtl_qgis.algorithms import train as train_module
    from pmtl_qgis.engine_process import ProcessResult

    built, ran = [], []
    real = train_module.training_command

    def spy(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    def fake_run(command, env, feedback):
        ran.append(list(command))
        return ProcessResult(returncode=0, canceled=False)

    monkeypatch.setattr(train_module, "training_command", spy)
    monkeypatch.setattr(
        train_module.Train, "run_command", lambda self, command, env, feedback: fake_run(command, env, feedback)
    )
    monkeypatch.setattr(train_module.Train, "_results", lambda self, result, out_dir, feedback: {})
    chips = tmp_path / "chips"
    raster = write_geotiff(tmp_path / "ortho.tif", scene(64)[0])
    run_algorithm("pmtl:chip_isprs_raster", {"INPUT": str(raster), "LABEL": str(raster), "SIZE": 32, "STRIDE": 32,
                                              "OUTPUT": str(chips)})  # fmt: skip
    run_algorithm("pmtl:train", {"SEG_DATA": str(chips), "MODEL": 0, "RESUME": False, "OUTPUT": str(tmp_path / "r")})
    assert len(built) == 1 and ran == built
    assert "--resume" not in ran[0] and any(a.startswith("data.seg=") for a in ran[0])


def test_engine_console_lines_name_parameters_in_the_dialogs_words(qgis_processing, tmp_path):
    """What the training CLI prints on cancel under --json-progress reaches the log as the dialog names it."""
    import sys

    from qgis.core import QgsApplication

    from pmtl_qgis.engine_process import run_streaming

    train = QgsApplication.processingRegistry().createAlgorithmById("pmtl:train")
    child = tmp_path / "child.py"
    child.write_text(
        "import sys\nprint('training cancelled; last.pt is kept (resume with [[resume]])', file=sys.stderr)\n"
    )
    feedback = CapturingFeedback()
    run_streaming([sys.executable, str(child)], feedback, render=train.engine_text)
    assert feedback.console == [
        "training cancelled; last.pt is kept (resume with 'Resume the run in the checkpoint folder')"
    ]


def test_temporary_outputs_are_told_from_user_files(qgis_processing, tmp_path):
    from qgis.core import QgsProcessingUtils

    from pmtl_qgis.layer_reader import is_temporary_output

    assert is_temporary_output(QgsProcessingUtils.generateTempFilename("OUTPUT.vrt"))
    assert is_temporary_output(QgsProcessingUtils.generateTempFilename("labels.gpkg") + "|layername=labels")
    assert not is_temporary_output(str(tmp_path / "top_potsdam_2_10.tif"))
