"""Export runs in the engine's child process (no torch in QGIS) and Cancel stops it without leaving a file."""

from __future__ import annotations

import time

import pytest
from qgis.core import QgsProcessingException
from qgis_helpers import CapturingFeedback, run_algorithm
from testmodels import isprs_description, save_random_checkpoint

from engine.models import ModelConfig

pytestmark = pytest.mark.qgis


def test_cancel_stops_the_export_child_and_leaves_no_model(qgis_processing, tmp_path):
    checkpoint = tmp_path / "best.pt"
    save_random_checkpoint(checkpoint, ModelConfig(), isprs_description(chip_size=64))
    out = tmp_path / "model.onnx"
    feedback = CapturingFeedback(cancel_on="exporting")  # the child's first progress message
    start = time.monotonic()
    with pytest.raises(QgsProcessingException, match="was cancelled; no output was written"):
        run_algorithm("pmtl:export_onnx", {"CHECKPOINT": str(checkpoint), "OUTPUT": str(out)}, feedback)
    assert time.monotonic() - start < 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]  # no model, no temporary file
    assert "export cancelled; no model was written" in feedback.console  # the child said so itself
