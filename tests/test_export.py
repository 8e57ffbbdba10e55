"""ONNX export (engine.export): onnxruntime ↔ torch parity on the real student, metadata schema, checkpoints."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from testmodels import isprs_description
from torch import nn
from torchvision.ops import batched_nms

from engine.core import modelio as md
from engine.core.classes import DET_CLASSES, SEG_CLASSES
from engine.core.errors import ConfigError, InputError
from engine.export import export_checkpoint, export_onnx
from engine.export.__main__ import main as export_main
from engine.models import ModelConfig, build_model, decode, postprocess_detections
from engine.models.checkpoint import save_checkpoint
from engine.predict.detections import nms, tile_detections

TILE = 64
DESCRIPTION = isprs_description(
    name="student_soft_pdf",
    datasets={"det": {"dataset": "potsdam", "gsd": 0.05}, "seg": {"dataset": "vaihingen", "gsd": 0.09}},
    kd={"soft": True, "feature": "pdf"},
    validation={"det_map": 0.31, "seg_miou": 0.62},
)


def student(seed: int = 0) -> nn.Module:
    """Random-init student whose heads are re-drawn wider, so scores and boxes spread (no ties at threshold)."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig()).eval()
    nn.init.normal_(model.det_head.cls_tower.predictors[0].weight, std=3.0)
    nn.init.constant_(model.det_head.cls_tower.predictors[0].bias, -2.0)
    nn.init.normal_(model.det_head.box_tower.predictors[0].weight, std=1.0)
    nn.init.normal_(model.seg_head.classifier.weight, std=5.0)
    return model


def props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, nn.Module, dict]:
    model = student()
    path = tmp_path_factory.mktemp("export") / "student.onnx"
    meta = export_onnx(model, path, DESCRIPTION, TILE, overlap=16)
    return path, model, meta


def test_onnxruntime_matches_torch(exported):
    path, model, _ = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["seg_logits", "det_scores", "det_boxes"]
    assert session.get_inputs()[0].shape == ["batch", 3, TILE, TILE]
    x = torch.randn(3, 3, TILE, TILE, generator=torch.Generator().manual_seed(1))  # batch 3 ≠ export batch 2
    seg, scores, boxes = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        out = model(x)
    anchors = model.anchors_for((TILE, TILE), device="cpu")
    # stated tolerances (fp32, CPU): logits and scores 1e-4 absolute, boxes 1e-3 px
    np.testing.assert_allclose(seg, out["seg_logits"].numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(scores, torch.sigmoid(out["cls_logits"]).numpy(), atol=1e-4)
    np.testing.assert_allclose(boxes, decode(out["box_deltas"], anchors).numpy(), atol=1e-3, rtol=1e-5)
    assert float(seg.std()) > 0.3 and 0.05 < float(scores.mean()) < 0.95  # outputs are far from constant

    # identical detections after post-processing: torch's postprocess vs inference's numpy path on ORT outputs
    reference = postprocess_detections(out["cls_logits"], out["box_deltas"], anchors, (TILE, TILE), 0.6, 0.5)
    total = 0
    for k, ref in enumerate(reference):
        got_boxes, got_scores, got_labels = tile_detections(scores[k], boxes[k], 0.6, 0.5, TILE)
        assert len(got_scores) == len(ref["scores"])
        np.testing.assert_array_equal(got_labels, ref["labels"].numpy())
        np.testing.assert_allclose(got_boxes, ref["boxes"].numpy(), atol=1e-3)
        np.testing.assert_allclose(got_scores, ref["scores"].numpy(), atol=1e-4)
        total += len(got_scores)
    assert total > 30


def test_numpy_nms_equals_torchvision():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (300, 2))
    wh = rng.uniform(5, 30, (300, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.uniform(0, 1, 300).astype(np.float32)
    labels = rng.integers(0, 3, 300)
    for thresh in (0.3, 0.5, 0.7):
        expected = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), thresh)
        np.testing.assert_array_equal(nms(boxes, scores, labels, thresh), expected.numpy())


def test_metadata_in_the_file_validates_and_is_complete(exported):
    path, _, meta = exported
    stored = md.from_props(props(path))
    assert stored == json.loads(json.dumps(meta))
    md.validate_metadata(stored)
    assert stored["schema_version"] == md.SCHEMA_VERSION
    assert stored["tasks"] == ["det", "seg"]
    assert stored["input"]["bands"] == ["nir", "red", "green"] and stored["input"]["std"] == DESCRIPTION["std"]
    assert stored["seg"]["palette"][4] == [255, 255, 0] and stored["det"]["classes"] == list(DET_CLASSES)
    assert stored["det"]["decoding"]["variances"] == [0.1, 0.2] and stored["det"]["decoding"]["in_graph"] is True
    assert stored["provenance"]["validation"] == DESCRIPTION["validation"]
    assert stored["provenance"]["model_config"]["backbone"] == "resnet18"
    # Deepness keys, as that plugin reads them
    assert stored["model_type"] == "Segmentor" and stored["class_names"]["4"] == "car"
    assert math.isclose(stored["resolution"], 9.0) and stored["tile_size"] == TILE and stored["tiles_overlap"] == 25
    assert stored["standardization_mean"] == DESCRIPTION["mean"] and stored["det_conf"] == 0.3
    # the schema file is a valid JSON Schema and rejects what it should, naming the key
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(md.load_schema())
    for mutate, message in (
        (lambda m: m.pop("schema_version"), "'schema_version' is a required property"),
        (lambda m: m.update(schema_version=2), "'schema_version'"),
        (lambda m: m["input"]["value_scaling"].update(dtype="float64"), "'input/value_scaling/dtype'"),
        (lambda m: m.pop("seg"), "'seg' is a required property"),
        (lambda m: m["det"].update(score_thresh=1.5), "'det/score_thresh'"),
        (lambda m: m["class_names"].update(x="car"), "'class_names'"),
    ):
        broken = copy.deepcopy(stored)
        mutate(broken)
        with pytest.raises(InputError, match=message):
            md.validate_metadata(broken)


def test_deepness_variant(exported, tmp_path):
    _, model, _ = exported
    path = tmp_path / "deepness.onnx"
    meta = export_onnx(model, path, DESCRIPTION, TILE, variant="deepness")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["seg_probs"]  # Deepness loads single-output segmentors
    x = torch.randn(2, 3, TILE, TILE)
    (probs,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        expected = torch.softmax(model(x)["seg_logits"], 1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert meta["tasks"] == ["seg"] and meta["outputs"]["seg_probs"]["kind"] == "probabilities"
    assert "det" not in meta and "det_conf" not in meta


def test_export_checkpoint_prefers_ema_and_cli(tmp_path, capsys):
    model, ema = student(1), student(2)
    ckpt = tmp_path / "best.pt"
    save_checkpoint(
        ckpt,
        {
            "model_config": ModelConfig().to_dict(),
            "model": model.state_dict(),
            "ema": {"module": ema.state_dict(), "updates": 10},
            "metadata": {**DESCRIPTION, "chip_size": TILE},
        },
    )
    out = tmp_path / "from_ckpt.onnx"
    assert export_main(["--checkpoint", str(ckpt), "--out", str(out), "--overlap", "8"]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"] == ["seg_logits", "det_scores", "det_boxes"]
    stored = md.from_props(props(out))
    assert stored["tile_size"] == TILE and stored["overlap"] == 8
    assert stored["provenance"]["weights"] == "ema" and stored["provenance"]["checkpoint"] == str(ckpt)
    x = torch.randn(1, 3, TILE, TILE)
    (seg, *_) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(seg, ema(x)["seg_logits"].numpy(), atol=1e-4, rtol=1e-4)
        assert np.abs(seg - model(x)["seg_logits"].numpy()).max() > 0.1

    # bad inputs: a missing checkpoint, metadata without the data description
    assert export_main(["--checkpoint", str(tmp_path / "none.pt"), "--out", str(out)]) == 2
    assert "none.pt" in capsys.readouterr().err
    with pytest.raises(InputError, match=r"lacks the keys \['bands', 'value_scaling', 'mean', 'std', 'gsd'\]"):
        export_onnx(model, tmp_path / "x.onnx", {}, TILE)
    with pytest.raises(ConfigError, match="overlap"):
        export_onnx(model, tmp_path / "x.onnx", DESCRIPTION, TILE, overlap=40)
    with pytest.raises(ConfigError, match="opset"):
        export_checkpoint(ckpt, tmp_path / "x.onnx", opset=13)
    assert not (tmp_path / "x.onnx").exists()


class _TinySeg(nn.Module):
    """A seg-only module with the model output contract (for the torch.export-based exporter path)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, len(SEG_CLASSES), 3, padding=1)

    def forward(self, images):
        return {"features": [], "seg_logits": self.conv(images)}


@pytest.mark.slow
def test_dynamo_exporter(tmp_path):
    model = _TinySeg().eval()
    path = tmp_path / "dynamo.onnx"
    meta = export_onnx(model, path, DESCRIPTION, 32, dynamo=True)
    assert meta["tasks"] == ["seg"] and onnx.load(str(path)).opset_import[0].version >= 18
    x = torch.randn(5, 3, 32, 32)
    (seg,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(seg, model(x)["seg_logits"].numpy(), atol=1e-5)


def test_single_task_teacher_exports_and_predicts(tmp_path):
    """A detection-only network (a single-task teacher) exports with det outputs only and runs in predict."""
    from osgeo import gdal, osr

    from engine.predict import predict_raster

    torch.manual_seed(0)
    model = build_model(ModelConfig(tasks=("det",))).eval()
    nn.init.constant_(model.det_head.cls_tower.predictors[0].bias, 0.0)
    path = tmp_path / "teacher_det.onnx"
    meta = export_onnx(model, path, {**DESCRIPTION, "role": "teacher"}, TILE, overlap=16)
    assert meta["tasks"] == ["det"] and list(meta["outputs"]) == ["det_scores", "det_boxes"]
    assert meta["model_type"] == "Detector" and "seg" not in meta and meta["provenance"]["role"] == "teacher"
    raster = tmp_path / "in.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(raster), 100, 90, 3, gdal.GDT_Byte)
    ds.SetGeoTransform((500000.0, 0.09, 0.0, 5400000.0, 0.0, -0.09))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32632)
    ds.SetProjection(srs.ExportToWkt())
    ds.WriteArray(np.random.default_rng(0).integers(0, 256, (3, 90, 100), dtype=np.uint8))
    ds = None
    with pytest.raises(ConfigError, match="no segmentation output"):
        predict_raster(path, raster, tmp_path / "seg.tif")
    summary = predict_raster(path, raster, out_vector=tmp_path / "det.gpkg", score_thresh=0.4)
    assert summary.tiles == 4 and summary.detections > 0 and summary.raw_detections >= summary.detections
