"""Export runs in the engine's child process (no torch in QGIS) and Cancel stops it without leaving a file."""

from __future__ import annotations

import time

import pytest
from qgis.core import QgsProcessingException
from qgis_helpers import CapturingFeedback, run_algorithm

from engine.core.classes import DET_CLASSES, PALETTE, SEG_CLASSES
from engine.models import ModelConfig, build_model
from engine.train.checkpoint import save_checkpoint

pytestmark = pytest.mark.qgis


def test_cancel_stops_the_export_child_and_leaves_no_model(qgis_processing, tmp_path):
    checkpoint = tmp_path / "best.pt"
    metadata = {
        "bands": ["nir", "red", "green"],
        "value_scaling": {"dtype": "uint8", "max": 255.0},
        "mean": [0.4, 0.3, 0.3],
        "std": [0.2, 0.2, 0.2],
        "gsd": 0.09,
        "seg_classes": list(SEG_CLASSES),
        "palette": [list(c) for c in PALETTE],
        "det_classes": list(DET_CLASSES),
        "chip_size": 64,
    }
    model = build_model(ModelConfig())
    save_checkpoint(
        checkpoint, {"model_config": ModelConfig().to_dict(), "model": model.state_dict(), "metadata": metadata}
    )
    out = tmp_path / "model.onnx"
    feedback = CapturingFeedback(cancel_on="exporting")  # the child's first progress message
    start = time.monotonic()
    with pytest.raises(QgsProcessingException, match="was cancelled; no output was written"):
        run_algorithm("pmtl:export_onnx", {"CHECKPOINT": str(checkpoint), "OUTPUT": str(out)}, feedback)
    assert time.monotonic() - start < 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]  # no model, no temporary file
    assert "export cancelled; no model was written" in feedback.console  # the child said so itself
