"""The precision parameters of pmtl:export_onnx and pmtl:detect_segment, through Processing."""

from __future__ import annotations

import pytest
from qgis.core import QgsProcessingException
from qgis_helpers import CapturingFeedback, run_algorithm, scene, write_geotiff
from testmodels import isprs_description, save_random_checkpoint

from engine.models import ModelConfig
from engine.predict.model import OnnxModel

pytestmark = pytest.mark.qgis


def test_export_fp16_and_detect_segment_checks_the_precision(qgis_processing, tmp_path):
    cfg = ModelConfig(channels=32, seg_channels=16)
    ckpt = save_random_checkpoint(tmp_path / "best.pt", cfg, isprs_description(chip_size=64))
    model = tmp_path / "model_fp16.onnx"
    run_algorithm("pmtl:export_onnx", {"CHECKPOINT": str(ckpt), "PRECISION": 2, "OUTPUT": str(model)})
    assert OnnxModel(model, device="cpu").info.raw["precision"] == "fp16"

    image = write_geotiff(tmp_path / "ortho.tif", scene(96)[0])
    params = {"INPUT": str(image), "MODEL": str(model), "OUTPUT_DETECTIONS": str(tmp_path / "d.gpkg")}
    feedback = CapturingFeedback()
    with pytest.raises(QgsProcessingException) as raised:
        run_algorithm("pmtl:detect_segment", {**params, "PRECISION": 2, "OUTPUT_RASTER": str(tmp_path / "a.tif")})
    assert "expected precision int8" in str(raised.value) and "is fp16" in str(raised.value)
    assert not (tmp_path / "a.tif").exists()
    run_algorithm("pmtl:detect_segment", {**params, "PRECISION": 3, "OUTPUT_RASTER": str(tmp_path / "b.tif")}, feedback)
    assert (tmp_path / "b.tif").exists() and any("Model precision fp16" in line for line in feedback.infos)
