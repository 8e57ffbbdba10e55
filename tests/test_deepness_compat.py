"""Exported models against the Deepness QGIS plugin's documented model requirements (re-implemented checks).

Deepness (PUTvision/qgis-plugin-deepness, docs "Model classes and requirements" and "Adding metadata to ONNX
model") reads: one input [BATCH, CHANNELS, SIZE, SIZE] (batch 1 or dynamic, square tile); a Segmentor's outputs
[BATCH, NUM_CLASSES, SIZE, SIZE] (softmax, summing to 1) whose class count it takes from the declared shape; JSON
metadata model_type, class_names ({id: name}, ids consecutive from 0), resolution (cm/px), tile_size, tiles_overlap
(%), standardization_mean/std applied after raw / 255, seg_thresh (probabilities below it zeroed before argmax).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from osgeo import gdal, osr
from testmodels import ColourSegmenter, isprs_description
from torch import nn

from engine.core.classes import SEG_CLASSES
from engine.export import export_onnx
from engine.models import ModelConfig, build_model
from engine.predict import predict_raster

TILE = 64
GSD = 0.09
DEEPNESS_MODEL_TYPES = {"Segmentor", "Detector", "Regressor", "Recognition", "Superresolution"}


def small_model(tasks: tuple[str, ...] = ("det", "seg"), seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(tasks=tasks, channels=32, seg_channels=16)).eval()
    if "seg" in tasks:
        nn.init.normal_(model.seg_head.classifier.weight, std=5.0)  # confident, varied class maps
    return model


def metadata_of(path: Path) -> dict[str, Any]:
    """Deepness json-decodes every value it reads from custom_metadata_map."""
    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
    return {key: json.loads(value) for key, value in meta.custom_metadata_map.items()}


def static_shape_problems(path: Path) -> list[str]:
    """Every dimension but the first (batch) of every input and output must be a number."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    problems = []
    for kind, values in (("input", session.get_inputs()), ("output", session.get_outputs())):
        for value in values:
            symbolic = [d for d in value.shape[1:] if not isinstance(d, int)]
            if symbolic:
                problems.append(f"{kind} {value.name} {value.shape}: symbolic {symbolic}")
    return problems


def deepness_segmentor_problems(path: Path) -> list[str]:
    """What in this model breaks Deepness's documented requirements for a Segmentor (empty: none)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = metadata_of(path)
    problems: list[str] = []
    inputs = session.get_inputs()
    if len(inputs) != 1:
        return [f"{len(inputs)} inputs, Deepness needs one"]
    shape = inputs[0].shape
    if len(shape) != 4 or not (shape[0] == 1 or isinstance(shape[0], str)):
        problems.append(f"input shape {shape}: expected [BATCH (1 or dynamic), CHANNELS, SIZE, SIZE]")
        return problems
    channels, size = shape[1], shape[3]
    if not all(isinstance(d, int) for d in shape[1:]) or shape[2] != shape[3]:
        problems.append(f"input shape {shape}: channels and a square tile must be static")
    model_type = str(meta.get("model_type", "")).capitalize()
    if model_type not in DEEPNESS_MODEL_TYPES:
        problems.append(f"model_type {meta.get('model_type')!r} is not a Deepness model type")
    elif model_type != "Segmentor":
        problems.append(f"model_type {model_type!r}, expected 'Segmentor'")
    names = meta.get("class_names")
    per_output = names if isinstance(names, list) else [names]
    outputs = session.get_outputs()
    if not isinstance(names, (dict, list)) or len(per_output) != len(outputs):
        problems.append(f"class_names {names!r}: expected one {{id: name}} dict per output ({len(outputs)})")
        per_output = [None] * len(outputs)
    for output, mapping in zip(outputs, per_output):
        out_shape = output.shape
        if len(out_shape) != 4 or not all(isinstance(d, int) for d in out_shape[1:]):
            problems.append(f"output {output.name} {out_shape}: expected [BATCH, NUM_CLASSES, SIZE, SIZE], static")
            continue
        if out_shape[2:] != [size, size]:
            problems.append(f"output {output.name} {out_shape}: spatial size differs from the input tile {size}")
        if mapping is not None:
            ids = sorted(int(k) for k in mapping)
            if ids != list(range(len(ids))):
                problems.append(f"class_names ids {ids} are not consecutive from 0")
            if len(ids) != max(out_shape[1], 2):
                problems.append(f"class_names has {len(ids)} names, output {output.name} has {out_shape[1]} channels")
    if not isinstance(meta.get("resolution"), (int, float)) or meta["resolution"] <= 0:
        problems.append(f"resolution {meta.get('resolution')!r}: expected cm/px > 0")
    if meta.get("tile_size") != size:
        problems.append(f"tile_size {meta.get('tile_size')!r} differs from the input tile {size}")
    overlap = meta.get("tiles_overlap")
    if not isinstance(overlap, int) or not 0 <= overlap < 100:
        problems.append(f"tiles_overlap {overlap!r}: expected an integer percentage")
    for key in ("standardization_mean", "standardization_std"):
        values = meta.get(key)
        if not isinstance(values, list) or len(values) != channels:
            problems.append(f"{key} {values!r}: expected {channels} numbers")
    if any(v <= 0 for v in meta.get("standardization_std") or [1]):
        problems.append("standardization_std has values <= 0")
    if not 0 <= float(meta.get("seg_thresh", 0)) <= 1:
        problems.append(f"seg_thresh {meta.get('seg_thresh')!r} outside [0, 1]")
    return problems


def deepness_class_map(path: Path, hwc: np.ndarray) -> np.ndarray:
    """Deepness's documented processing of one tile: raw / 255, (x - mean) / std, NCHW, probabilities below
    seg_thresh zeroed, argmax over classes."""
    meta = metadata_of(path)
    x = hwc[None].astype(np.float32) / 255.0
    x = (x - np.asarray(meta["standardization_mean"], np.float32)) / np.asarray(meta["standardization_std"], np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (probs,) = session.run(None, {session.get_inputs()[0].name: x.transpose(0, 3, 1, 2).astype(np.float32)})
    probs[probs < float(meta.get("seg_thresh", 0.0))] = 0.0
    return probs[0].argmax(axis=0)


def write_raster(path: Path, chw: np.ndarray) -> None:
    dtype = gdal.GDT_Byte if chw.dtype == np.uint8 else gdal.GDT_UInt16
    ds = gdal.GetDriverByName("GTiff").Create(str(path), chw.shape[2], chw.shape[1], chw.shape[0], dtype)
    ds.SetGeoTransform((500000.0, GSD, 0.0, 5400000.0, 0.0, -GSD))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32632)
    ds.SetProjection(srs.ExportToWkt())
    ds.WriteArray(chw)
    ds = None


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("deepness")
    both, seg, det = small_model(), small_model(("seg",)), small_model(("det",))
    paths = {}
    for name, model, variant in (
        ("full", both, "full"),
        ("deepness", both, "deepness"),
        ("seg_teacher", seg, "full"),
        ("det_teacher", det, "full"),
        ("seg_teacher_deepness", seg, "deepness"),
    ):
        paths[name] = folder / f"{name}.onnx"
        export_onnx(model, paths[name], isprs_description(GSD), TILE, overlap=16, variant=variant)
    return paths


def test_every_output_is_static_except_batch(models):
    for name, path in models.items():
        assert static_shape_problems(path) == [], name
        # the declared shapes are the shapes the graph produces, at another batch size than the export's
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        results = session.run(None, {"images": np.zeros((3, 3, TILE, TILE), np.float32)})
        for declared, value in zip(session.get_outputs(), results):
            assert list(value.shape) == [3, *declared.shape[1:]], (name, declared.name)
        # the metadata's output shapes say the same
        stored = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["outputs"])
        assert {k: v["shape"][1:] for k, v in stored.items()} == {o.name: o.shape[1:] for o in session.get_outputs()}
    assert ort.InferenceSession(str(models["full"])).get_outputs()[1].shape == ["batch", 510, 3]


def test_deepness_variant_meets_deepness_requirements(models):
    for name in ("deepness", "seg_teacher_deepness"):
        assert deepness_segmentor_problems(models[name]) == [], name
        meta = metadata_of(models[name])
        assert meta["model_type"] == "Segmentor" and meta["tile_size"] == TILE and meta["resolution"] == 9.0
        assert [meta["class_names"][str(i)] for i in range(6)] == list(SEG_CLASSES)
        assert meta["tiles_overlap"] == 25 and meta["seg_thresh"] == 0.0
    # the checker can fail: the full graph (detection outputs are not segmentation maps) is not a Deepness model,
    # and a symbolic channel dimension (what the exporter used to write) is caught
    problems = deepness_segmentor_problems(models["full"])
    assert any("det_scores" in p for p in problems) and any("det_boxes" in p for p in problems)
    assert any("'Detector'" in p for p in deepness_segmentor_problems(models["det_teacher"]))
    proto = onnx.load(str(models["deepness"]))
    proto.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "Softmaxseg_probs_dim_1"
    broken = models["deepness"].with_name("symbolic.onnx")
    onnx.save(proto, str(broken))
    assert any("seg_probs" in p for p in deepness_segmentor_problems(broken))
    assert static_shape_problems(broken) == [
        "output seg_probs ['batch', 'Softmaxseg_probs_dim_1', 64, 64]: symbolic ['Softmaxseg_probs_dim_1']"
    ]


@pytest.mark.parametrize(("dtype", "value_max"), [("uint8", 255.0), ("uint16", 4095.0)])
def test_deepness_processing_gives_our_class_map(tmp_path, dtype, value_max):
    """Deepness's preprocessing (raw / 255, then its standardisation) + threshold + argmax on one tile equals the
    class map engine.predict writes: the metadata fold the value scaling into Deepness's mean/std."""
    path = tmp_path / "model.onnx"
    export_onnx(ColourSegmenter().eval(), path, isprs_description(GSD, dtype, value_max), TILE, variant="deepness")
    rng = np.random.default_rng(0)
    top = int(value_max)
    blocks = rng.integers(0, top + 1, (3, TILE // 8, TILE // 8))  # 8 px patches of one colour: varied classes
    chw = np.kron(blocks, np.ones((8, 8), np.int64)).astype(np.uint8 if dtype == "uint8" else np.uint16)
    raster = tmp_path / "tile.tif"
    write_raster(raster, chw)
    predict_raster(path, raster, tmp_path / "classes.tif")
    ours = gdal.Open(str(tmp_path / "classes.tif")).ReadAsArray()
    theirs = deepness_class_map(path, chw.transpose(1, 2, 0))
    assert len(np.unique(ours)) >= 3  # a real class map, not a constant
    assert np.mean(ours == theirs) > 0.999  # float32 rounding may flip a near-tie
