"""The precision parameters of pmtl:export_onnx and pmtl:detect_segment, through Processing."""

from __future__ import annotations

import pytest
import torch
from qgis.core import QgsProcessingException
from qgis_helpers import CapturingFeedback, run_algorithm, scene, write_geotiff

from engine.core.classes import DET_CLASSES, PALETTE, SEG_CLASSES
from engine.models import ModelConfig, build_model
from engine.predict.model import OnnxModel
from engine.train.checkpoint import save_checkpoint

pytestmark = pytest.mark.qgis


def test_export_fp16_and_detect_segment_checks_the_precision(qgis_processing, tmp_path):
    cfg = ModelConfig(channels=32, seg_channels=16)
    torch.manual_seed(0)
    metadata = {
        "bands": ["nir", "red", "green"],
        "value_scaling": {"dtype": "uint8", "max": 255.0},
        "mean": [0.45, 0.32, 0.31],
        "std": [0.21, 0.15, 0.14],
        "gsd": 0.09,
        "chip_size": 64,
        "seg_classes": list(SEG_CLASSES),
        "palette": [list(c) for c in PALETTE],
        "det_classes": list(DET_CLASSES),
    }
    ckpt = tmp_path / "best.pt"
    save_checkpoint(ckpt, {"model_config": cfg.to_dict(), "model": build_model(cfg).state_dict(), "metadata": metadata})
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
