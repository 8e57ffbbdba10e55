"""pmtl:finetune: the command it builds, and the loop in QGIS: improve a checkpoint with an edited layer (engine in
its child process), then 'Detect and segment' with the improved model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from qgis.core import QgsProcessingException
from qgis_helpers import CapturingFeedback, run_algorithm

from pmtl_qgis.algorithms.finetune import finetune_arguments, option_default
from tests.test_finetune import HOUSES, _polygons, _raster, start  # noqa: F401  (start: the module fixture)

pytestmark = pytest.mark.qgis


def test_the_command_has_a_flag_per_given_option_and_leaves_defaults_to_the_engine():
    values = {"checkpoint": "/m/best.pt", "images": "/d/a b.tif", "labels": "/d/l.gpkg", "class_field": None,
              "task": "det", "steps": 20, "size": None, "device": None, "out": "/o"}  # fmt: skip
    assert finetune_arguments(values) == [
        "--checkpoint", "/m/best.pt", "--image", "/d/a b.tif", "--labels", "/d/l.gpkg", "--task", "det",
        "--steps", "20", "--out", "/o",
    ]  # fmt: skip
    from engine.finetune.options import FinetuneOptions

    assert option_default("steps") == FinetuneOptions().steps


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
