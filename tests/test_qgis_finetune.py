"""pmtl:finetune: the command it builds, and the loop in QGIS: improve a checkpoint with an edited layer (engine in
its child process), then 'Detect and segment' with the improved model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from qgis.core import QgsProcessingException
from qgis_helpers import CapturingFeedback, ensure_provider, run_algorithm

from pmtl_qgis.algorithms.finetune import finetune_arguments, option_default
from tests.test_finetune import HOUSES, _polygons, _raster, start  # noqa: F401  (start: the module fixture)

pytestmark = pytest.mark.qgis


def test_the_command_has_a_flag_per_given_option_and_leaves_defaults_to_the_engine():
    values = {"checkpoint": "/m/best.pt", "images": "/d/a b.tif", "labels": "/d/l.gpkg", "class_field": None,
              "task": "det", "steps": 20, "size": None, "scale_max": 4095.0, "device": None, "out": "/o"}  # fmt: skip
    assert finetune_arguments(values) == [
        "--checkpoint", "/m/best.pt", "--image", "/d/a b.tif", "--labels", "/d/l.gpkg", "--task", "det",
        "--steps", "20", "--scale-max", "4095.0", "--out", "/o",
    ]  # fmt: skip
    from engine.finetune.options import FinetuneOptions

    assert option_default("steps") == FinetuneOptions().steps


def test_what_the_engine_tells_names_fields_of_the_dialog(qgis_processing):
    """Fine-tuning chips the labels: the chipper's warnings and errors name scale_max (16-bit imagery), image,
    labels … and the dialog names each by one of its own fields (not 'scale max', which it would not have)."""
    algorithm = ensure_provider().algorithm("finetune")
    labels = {f"'{p.description()}'" for p in algorithm.parameterDefinitions()}
    for name in ("scale_max", "image", "labels", "class_field", "aoi", "size", "task"):
        assert algorithm.param_words(name) in labels, name
    warning = "raster 'a.tif': uint16 values range over 0..4095 … set [[scale_max]] to the sensor's maximum"
    assert algorithm.engine_text(warning).endswith("set 'Value scaling maximum' to the sensor's maximum")


@pytest.mark.slow
def test_improve_then_detect_with_the_improved_model(qgis_processing, start, tmp_path: Path):  # noqa: F811
    raster = _raster(tmp_path / "ortho.tif")
    labels = _polygons(tmp_path / "detections.gpkg", HOUSES, ["building"] * len(HOUSES))
    feedback = CapturingFeedback()
    params = {"INPUT": str(raster), "LABELS": str(labels), "CLASS_FIELD": "class", "MODEL": str(start["best"]),
              "STEPS": 2, "SIZE": 64, "DEVICE": 1, "OUTPUT": str(tmp_path / "improved")}  # fmt: skip
    out = run_algorithm("pmtl:finetune", params, feedback)
    assert Path(out["OUTPUT_MODEL"]).is_file() and Path(out["CHECKPOINT"]).is_file()
    assert set(json.loads(out["SCORES"])["after"]) >= {"det_ap50"}
    assert "det_ap50 on the held-out labels" in feedback.text()
    detected = run_algorithm(
        "pmtl:detect_segment",
        {
            "INPUT": str(raster),
            "MODEL": out["OUTPUT_MODEL"],
            "OUTPUT_RASTER": str(tmp_path / "classes.tif"),
            "OUTPUT_DETECTIONS": str(tmp_path / "again.gpkg"),
        },
    )
    assert Path(detected["OUTPUT_DETECTIONS"]).is_file()
    with pytest.raises(QgsProcessingException):  # the folder now holds a run
        run_algorithm("pmtl:finetune", params, CapturingFeedback())
