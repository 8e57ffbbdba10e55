"""The provider in a real headless QGIS: registration, parameters, errors, environment discovery, styling."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from qgis.core import (
    QgsExpressionContext,
    QgsExpressionContextUtils,
    QgsFeature,
    QgsField,
    QgsGeometry,
    QgsProcessingException,
    QgsProcessingParameterDefinition,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QVariant
from qgis_helpers import VENV_PYTHON, CapturingFeedback, ensure_provider, run_algorithm, write_geotiff

from engine.core.classes import PALETTE, SEG_CLASSES
from pmtl_qgis import environment
from pmtl_qgis.algorithms.generate_synthetic import GenerateSynthetic
from pmtl_qgis.feedback import FeedbackProgress
from pmtl_qgis.styling import apply_class_palette, apply_detection_style

pytestmark = pytest.mark.qgis

STABLE_IDS = {
    "generate_synthetic",
    "chip_isprs",
    "chip_isprs_raster",
    "chip_own_labels",
    "chip_unlabelled",
    "train",
    "finetune",
    "export_onnx",
    "detect_segment",
    "detect_segment_region",
    "evaluate",
    "render_map",
    "install_dependencies",
}


def test_provider_registers_the_algorithms_with_help_and_typed_parameters(qgis_processing):
    provider = ensure_provider()
    algorithms = {alg.name(): alg for alg in provider.algorithms()}
    assert set(algorithms) == STABLE_IDS
    for name, alg in algorithms.items():
        assert alg.id() == f"pmtl:{name}"
        assert "Example (qgis_process): qgis_process run pmtl:" + name in alg.shortHelpString()
        # the help panel renders HTML: a bare '<' swallows the rest of the text ("stride < size" did)
        assert not re.search(r"<(?![a-zA-Z/!])", alg.shortHelpString()), f"{alg.id()}: a bare '<' in its help"
        for parameter in alg.parameterDefinitions():
            assert parameter.help(), f"{alg.id()} {parameter.name()} has no help string"
        assert alg.outputDefinitions(), f"{alg.id()} declares no outputs for the modeler"


def test_expert_parameters_are_advanced_and_main_ones_are_not(qgis_processing):
    provider = ensure_provider()
    train = provider.algorithm("train")
    flags = {
        p.name(): bool(p.flags() & QgsProcessingParameterDefinition.FlagAdvanced) for p in train.parameterDefinitions()
    }
    assert flags["OVERRIDES"] and flags["LR"] and flags["DEVICE"]
    assert not any(flags[name] for name in ("DET_DATA", "SEG_DATA", "KD", "OUTPUT", "RESUME"))
    outputs = {o.name(): o.type() for o in train.outputDefinitions()}
    assert outputs["CHECKPOINT"] == "outputFile"  # chains into export_onnx / evaluate in a model


def test_invalid_combination_gives_processing_error_naming_parameters(qgis_processing, tmp_path):
    feedback = CapturingFeedback()
    image = write_geotiff(tmp_path / "ortho.tif", np.full((3, 32, 32), 90, np.uint8))
    with pytest.raises(QgsProcessingException):
        run_algorithm("pmtl:chip_own_labels", {"IMAGES": [str(image)], "OUTPUT": str(tmp_path / "chips")}, feedback)
    assert any("Give exactly one of 'Label polygons' or 'Class raster'" in e for e in feedback.errors)
    assert "Traceback" not in feedback.text()
    feedback = CapturingFeedback()
    with pytest.raises(QgsProcessingException):
        run_algorithm("pmtl:train", {"KD": 6, "OUTPUT": str(tmp_path / "run"), "DET_DATA": str(tmp_path)}, feedback)
    assert any(
        "'Knowledge distillation' (config key kd): distillation fills the missing task" in e for e in feedback.errors
    )


def test_a_distillation_run_without_a_teacher_names_the_dialog_field(qgis_processing, tmp_path):
    """Train validates through the engine's config (no copy of its checks); the config key it names becomes the
    dialog's label, in one line."""
    teacher = tmp_path / "seg_teacher.pt"
    teacher.write_bytes(b"")
    params = {"DET_DATA": str(tmp_path), "SEG_DATA": str(tmp_path), "KD": 6, "SEG_TEACHER": str(teacher),
              "OUTPUT": str(tmp_path / "run")}  # fmt: skip
    feedback = CapturingFeedback()
    with pytest.raises(QgsProcessingException):
        run_algorithm("pmtl:train", params, feedback)
    expected = (
        "'Detection teacher checkpoint' (config key kd.det_teacher): distillation is on, so a teacher checkpoint "
        "is needed"
    )
    assert expected in [line for error in feedback.errors for line in error.splitlines()]
    assert "Traceback" not in feedback.text() and not (tmp_path / "run").exists()


def test_missing_dependency_says_what_to_install_instead_of_crashing(qgis_processing, tmp_path):
    class NeedsAbsentPackage(GenerateSynthetic):
        REQUIRED_MODULES = ("torch", "pmtl_absent_package_for_test")

    feedback = CapturingFeedback()
    with pytest.raises(QgsProcessingException):
        run_algorithm(NeedsAbsentPackage(), {"OUTPUT": str(tmp_path / "x")}, feedback)
    message = "\n".join(feedback.errors)
    assert "cannot be imported: pmtl_absent_package_for_test." in message
    assert "pip install" in message and "PMTL_PYTHON=" in message
    assert "torch" not in message.split("imported:")[1].split(".")[0]  # torch is importable here


def test_install_message_names_pins_and_the_system_package_for_gdal():
    message = environment.install_message(["torch", "osgeo"])
    assert "python3-gdal" in message
    assert f"-r {environment.requirements_file()}" in message or "torch==2.14.1" in message


def test_environment_found_from_env_var_and_bad_paths_are_explained(monkeypatch, tmp_path):
    monkeypatch.setenv("PMTL_PYTHON", str(VENV_PYTHON))
    env = environment.find_python_env()
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert env.source == "the PMTL_PYTHON environment variable"
    assert env.site_packages == [VENV_PYTHON.parent.parent / "lib" / version / "site-packages"]
    assert env.problem is None

    monkeypatch.setenv("PMTL_PYTHON", str(tmp_path / "nowhere" / "python"))
    env = environment.find_python_env()
    assert (
        env.problem
        == f"the PMTL_PYTHON environment variable points to {tmp_path / 'nowhere' / 'python'}, which does not exist"
    )

    other = tmp_path / "oldvenv"
    (other / "lib" / "python3.8" / "site-packages").mkdir(parents=True)
    (other / "bin").mkdir()
    (other / "bin" / "python").write_text("")
    monkeypatch.setenv("PMTL_PYTHON", str(other / "bin" / "python"))
    env = environment.find_python_env()
    assert env.site_packages == [] and "python3.8" in env.problem and version in env.problem


def test_checkout_venv_is_found_without_configuration(monkeypatch):
    monkeypatch.delenv("PMTL_PYTHON", raising=False)
    env = environment.find_python_env()
    assert environment.engine_root() == Path(environment.__file__).resolve().parent.parent
    assert env.python == environment.engine_root() / ".venv" / "bin" / "python"
    assert env.source.startswith("the .venv next to the engine")


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_feedback_progress_maps_fraction_logs_throttled_and_cancels(qgis_app):
    feedback = CapturingFeedback()
    clock = _Clock()
    progress = FeedbackProgress(feedback, log_interval_s=1.0, clock=clock)
    progress.report(0.25, "tile 1/4")
    clock.now = 0.5
    progress.report(0.5, "tile 2/4")  # within the interval: bar moves, log stays quiet
    clock.now = 1.6
    progress.report(0.75, "tile 3/4")
    progress.report(1.0, "done")  # the end of a job always reaches the log
    progress.report(-0.5, "")  # clamped to [0, 1]
    progress.report(1.7, "")
    progress.report(None, "")  # unknown fraction: the bar stays
    assert feedback.progress_values == [25.0, 50.0, 75.0, 100.0, 0.0, 100.0]
    assert feedback.infos == ["tile 1/4", "tile 3/4", "done"]
    assert feedback.status == ["tile 2/4"]
    assert not progress.is_canceled()
    feedback.cancel()
    assert progress.is_canceled()


def test_class_raster_gets_its_own_class_names_and_colours(qgis_app, tmp_path):
    from osgeo import gdal

    from engine.predict.outputs import style_class_map

    path = write_geotiff(tmp_path / "classes.tif", np.arange(6, dtype=np.uint8).reshape(1, 2, 3))
    dataset = gdal.Open(str(path), gdal.GA_Update)
    style_class_map(dataset.GetRasterBand(1), SEG_CLASSES, PALETTE)  # as engine.predict writes class maps
    dataset = None
    layer = QgsRasterLayer(str(path), "classes")
    assert layer.isValid()
    apply_class_palette(layer)
    renderer = layer.renderer()
    assert renderer.type() == "paletted"
    got = [(c.value, c.label, c.color.getRgb()[:3]) for c in renderer.classes()]
    assert got == [(i, SEG_CLASSES[i], PALETTE[i]) for i in range(6)]
    apply_class_palette(layer, (("road", "field"), ((10, 20, 30), (40, 50, 60))))  # a model with its own classes
    got = [(c.value, c.label, c.color.getRgb()[:3]) for c in layer.renderer().classes()]
    assert got == [(0, "road", (10, 20, 30)), (1, "field", (40, 50, 60))]


def test_detections_are_outlined_by_class_and_labelled_with_score(qgis_app):
    layer = QgsVectorLayer("Polygon?crs=EPSG:32632", "detections", "memory")
    layer.dataProvider().addAttributes(
        [QgsField("class", QVariant.String), QgsField("class_id", QVariant.Int), QgsField("score", QVariant.Double)]
    )
    layer.updateFields()
    feature = QgsFeature(layer.fields())
    feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(0, 0, 4, 2)))
    feature.setAttributes(["car", 2, 0.8749])
    layer.dataProvider().addFeature(feature)
    feature.setAttributes(["boat", 3, 0.5])  # a class the model does not list: a fallback colour
    layer.dataProvider().addFeature(feature)
    apply_detection_style(layer, (("building", "car"), ((1, 2, 3), (4, 5, 6))))
    renderer = layer.renderer()
    assert renderer.type() == "categorizedSymbol" and renderer.classAttribute() == "class"
    colours = {c.value(): c.symbol().symbolLayer(1).strokeColor().getRgb()[:3] for c in renderer.categories()}
    assert set(colours) == {"building", "car", "boat"}
    assert colours["building"] == (1, 2, 3) and colours["car"] == (4, 5, 6)
    assert colours["boat"] not in ((1, 2, 3), (4, 5, 6))
    assert layer.labelsEnabled()
    settings = layer.labeling().settings()
    context = QgsExpressionContext(QgsExpressionContextUtils.globalProjectLayerScopes(layer))
    context.setFeature(next(layer.getFeatures()))
    from qgis.core import QgsExpression

    assert QgsExpression(settings.fieldName).evaluate(context) == "car 0.87"


def test_teachers_named_in_the_training_config_satisfy_distillation(qgis_processing, tmp_path):
    """Fixed with the engine doing Train's checks: the dialog's own copy of them demanded the teacher fields even when
    the training config names the teachers."""
    from qgis.core import QgsProcessingContext

    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"")
    config = tmp_path / "kd.yaml"
    config.write_text(f"kd:\n  det_teacher: {json.dumps(str(teacher))}\n  seg_teacher: {json.dumps(str(teacher))}\n")
    params = {"DET_DATA": str(tmp_path), "SEG_DATA": str(tmp_path), "KD": 6, "CONFIG": str(config),
              "OUTPUT": str(tmp_path / "run")}  # fmt: skip
    train = ensure_provider().algorithm("train").create()
    assert train.checkParameterValues(params, QgsProcessingContext()) == (True, "")
    del params["CONFIG"]
    ok, message = train.checkParameterValues(params, QgsProcessingContext())
    assert not ok and message.startswith("'Detection teacher checkpoint' (config key kd.det_teacher)")
