"""Every algorithm run as its dialog runs it, with the optional fields the user leaves empty.

The dialog's widgets give an empty file / folder field as QGIS NULL (a null QVariant), an empty text field as '' and
an empty number, enum, layer, extent or optional output as None (QGIS 3.22).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from qgis.core import NULL, QgsApplication, QgsProcessingParameterDefinition
from qgis_helpers import CapturingFeedback, ensure_provider, run_algorithm

pytestmark = pytest.mark.qgis


EMPTY = {"file": NULL, "string": ""}
"""Empty field value per parameter type; None for the other types."""


def dialog_parameters(alg_id: str, filled: dict) -> dict:
    """``filled`` plus, for every other optional parameter, what AlgorithmDialog passes for an empty field."""
    ensure_provider()
    alg = QgsApplication.processingRegistry().algorithmById(alg_id)
    params = dict(filled)
    for definition in alg.parameterDefinitions():
        optional = definition.flags() & QgsProcessingParameterDefinition.FlagOptional
        if optional and definition.name() not in params:
            params[definition.name()] = EMPTY.get(definition.type())
    return params


def run_as_dialog(alg_id: str, filled: dict) -> dict:
    feedback = CapturingFeedback()
    results = run_algorithm(alg_id, dialog_parameters(alg_id, filled), feedback)
    assert "does not exist" not in feedback.text() and "NULL" not in feedback.text()
    return results


@pytest.fixture(scope="module")
def chain(qgis_processing, tmp_path_factory) -> dict[str, Path]:
    """Synthetic data → chips → a one-step training, each run with the dialog's empty optional fields."""
    root = tmp_path_factory.mktemp("dialog")
    synth = run_as_dialog(
        "pmtl:generate_synthetic",
        {"DOMAIN": 0, "SEED": 0, "TILES": 2, "TILE_SIZE_M": 12.0, "OVERWRITE": False, "OUTPUT": str(root / "synth")},
    )
    chips = run_as_dialog(
        "pmtl:chip_isprs",
        {
            "INPUT_FOLDER": synth["OUTPUT"],
            "DATASET": 0,
            "SIZE": 64,
            "STRIDE": 64,
            "OUTPUT": str(root / "c"),
        },
    )
    train = run_as_dialog(
        "pmtl:train",
        {
            "SEG_DATA": chips["OUTPUT"],
            "MODEL": 0,
            "KD": 0,
            "EPOCHS": 1,
            "BATCH_SIZE": 2,
            "ITERS_PER_EPOCH": 1,
            "DEVICE": 1,
            "RESUME": False,
            "OUTPUT": str(root / "run"),
        },
    )
    return {"root": root, "image": Path(synth["IMAGE"]), "chips": Path(chips["OUTPUT"]), **train}


def test_data_and_training_run_with_empty_optional_fields(chain):
    manifest = json.loads((chain["chips"] / "manifest.json").read_text())
    assert manifest["complete"] is True
    assert Path(chain["CHECKPOINT"]).is_file()


def test_chip_isprs_raster_from_layers_with_empty_optional_fields(chain):
    label = str(chain["image"]).replace("/top/", "/gts_for_participants/")
    out = chain["root"] / "layer_chips"
    run_as_dialog(
        "pmtl:chip_isprs_raster",
        {"INPUT": str(chain["image"]), "LABEL": label, "SIZE": 32, "STRIDE": 32, "OUTPUT": str(out)},
    )
    assert json.loads((out / "manifest.json").read_text())["complete"] is True


def test_model_and_inference_algorithms_with_empty_optional_fields(chain):
    root = chain["root"]
    model = root / "model.onnx"
    run_as_dialog("pmtl:export_onnx", {"CHECKPOINT": chain["CHECKPOINT"], "VARIANT": 0, "OUTPUT": str(model)})
    assert model.is_file()
    report = root / "eval.json"
    evaluated = run_as_dialog(
        "pmtl:evaluate",
        {
            "CHECKPOINT": chain["CHECKPOINT"],
            "SEG_DATA": str(chain["chips"]),
            "SPLIT": "val",
            "DEVICE": 1,
            "BATCH_SIZE": 2,
            "OUTPUT": str(report),
        },
    )
    assert 0.0 <= evaluated["SEG_MIOU"] <= 1.0 and report.is_file()
    detected = run_as_dialog(
        "pmtl:detect_segment",
        {
            "INPUT": str(chain["image"]),
            "MODEL": str(model),
            "DEVICE": 0,
            "OUTPUT_RASTER": str(root / "classes.tif"),
            "OUTPUT_DETECTIONS": str(root / "boxes.gpkg"),
        },
    )
    assert Path(detected["OUTPUT_RASTER"]).is_file() and "OUTPUT_PROBS" not in detected
    rendered = run_as_dialog(
        "pmtl:render_map",
        {"INPUT": str(chain["image"]), "OPACITY": 0.5, "WIDTH": 100, "LEGEND": True, "OUTPUT": str(root / "m.png")},
    )
    assert Path(rendered["OUTPUT"]).is_file()
