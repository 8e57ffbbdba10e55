"""Reduced-precision export (INT8 static QDQ, FP16) and ONNX evaluation, on a tiny chip set the tests write."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from chipfixtures import write_chip_dataset
from osgeo import gdal, osr
from torch import nn

from engine.core import modelio as md
from engine.core.classes import DET_CLASSES, PALETTE, SEG_CLASSES
from engine.core.errors import ConfigError, InputError
from engine.evaluate.__main__ import main as evaluate_main
from engine.evaluate.onnx_eval import chips_to_tiles, compare_onnx, evaluate_onnx
from engine.evaluate.run import evaluate_model
from engine.export import export_checkpoint
from engine.export.__main__ import main as export_main
from engine.export.onnx_export import export_int8_or_fp32, given_sources
from engine.export.quantize import ChipSource, convert_precision, float_tail_nodes
from engine.models import ModelConfig, build_model
from engine.models.checkpoint import model_from_checkpoint, save_checkpoint
from engine.predict import predict_raster
from engine.predict.model import OnnxModel

TILE = 64
CFG = ModelConfig(channels=32, seg_channels=16)


def _student(seed: int = 0) -> nn.Module:
    """Random student with wider heads, so scores, boxes and class maps vary (no ties everywhere)."""
    torch.manual_seed(seed)
    model = build_model(CFG).eval()
    nn.init.normal_(model.det_head.cls_tower.predictors[0].weight, std=3.0)
    nn.init.constant_(model.det_head.cls_tower.predictors[0].bias, -2.0)
    nn.init.normal_(model.det_head.box_tower.predictors[0].weight, std=1.0)
    nn.init.normal_(model.seg_head.classifier.weight, std=5.0)
    return model


def _props(path: Path) -> dict:
    return md.from_props({p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props})


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("quant")
    chips = write_chip_dataset(base / "chips", {"train": 8, "val": 4, "test": 4}, size=TILE, seed=3)
    manifest = json.loads((chips / "manifest.json").read_text())
    metadata = {
        "bands": manifest["bands"],
        "value_scaling": manifest["value_scaling"],
        "mean": manifest["mean"],
        "std": manifest["std"],
        "normalization": "dataset",
        "gsd": 0.09,
        "chip_size": TILE,
        "seg_classes": list(SEG_CLASSES),
        "palette": [list(c) for c in PALETTE],
        "det_classes": list(DET_CLASSES),
    }
    ckpt = base / "best.pt"
    payload = {"model_config": CFG.to_dict(), "model": _student().state_dict(), "ema": None, "metadata": metadata}
    save_checkpoint(ckpt, {**payload, "config": {"data": {"det": str(chips), "seg": str(chips)}}})
    moved = base / "moved.pt"  # a checkpoint whose training chips are gone
    save_checkpoint(moved, {**payload, "config": {"data": {"det": str(base / "gone"), "seg": None}}})
    paths = {"base": base, "chips": chips, "ckpt": ckpt, "moved": moved}
    for precision in ("fp32", "int8", "fp16"):
        paths[precision] = base / f"{precision}.onnx"
    export_checkpoint(ckpt, paths["fp32"])
    export_checkpoint(ckpt, paths["int8"], precision="int8")  # calibration: the chips the checkpoint records
    convert_precision(paths["fp32"], paths["fp16"], "fp16", [ChipSource(chips)])  # from an exported fp32 file
    return paths


def _run(path: Path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})


def _test_tiles(setup) -> np.ndarray:
    model = OnnxModel(setup["fp32"], device="cpu")
    images = np.load(setup["chips"] / "test" / "images.npy")
    return chips_to_tiles(images, model.info, [0, 1, 2])


def test_int8_graph_shapes_size_and_float_tail(setup):
    fp32, int8 = onnx.load(str(setup["fp32"])), onnx.load(str(setup["int8"]))
    session = ort.InferenceSession(str(setup["int8"]), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["seg_logits", "det_scores", "det_boxes"]
    assert session.get_inputs()[0].shape == ["batch", 3, TILE, TILE]
    x = np.random.default_rng(0).normal(0, 1, (3, 3, TILE, TILE)).astype(np.float32)
    got, ref = _run(setup["int8"], x), _run(setup["fp32"], x)
    assert [a.shape for a in got] == [b.shape for b in ref] and all(a.dtype == np.float32 for a in got)
    # weights are stored as int8: the file is well under 35 % of fp32
    assert setup["int8"].stat().st_size < 0.35 * setup["fp32"].stat().st_size
    ops = [n.op_type for n in int8.graph.node]
    assert ops.count("DequantizeLinear") > 50 and ops.count("QuantizeLinear") > 20
    # the tail stays float: no QuantizeLinear consumes what the decoding, the sigmoid or the predictors produce
    producer = {o: n for n in int8.graph.node for o in n.output}
    for node in int8.graph.node:
        if node.op_type == "QuantizeLinear":
            assert producer.get(node.input[0]) is None or producer[node.input[0]].op_type not in ("Sigmoid", "Exp")
    tail = float_tail_nodes(fp32)
    assert {"Sigmoid", "Exp", "Conv"} <= {n.op_type for n in fp32.graph.node if n.name in tail}
    for out in int8.graph.output:
        assert producer[out.name].op_type not in ("DequantizeLinear", "QuantizeLinear")


def test_int8_metadata_precision_provenance_and_deltas(setup):
    meta = _props(setup["int8"])
    md.validate_metadata(meta)
    fp32 = _props(setup["fp32"])
    assert fp32["precision"] == "fp32" and meta["precision"] == "int8"
    for stored in (meta, fp32):  # the two files were exported seconds apart
        stored["provenance"].pop("created")
    same = {k: v for k, v in meta.items() if k not in ("precision", "quantization")}
    assert same == {k: v for k, v in fp32.items() if k != "precision"}  # same metadata otherwise
    quant = meta["quantization"]
    assert quant["method"] == "static_qdq" and quant["per_channel"] and quant["activation_type"] == "uint8"
    assert quant["reduce_range"]  # 7-bit weights: U8S8 without VNNI (AVX2 laptops) saturates at 8 bits
    calib = quant["calibration"]
    assert calib["split"] == "train" and calib["chips"] == 8
    assert calib["datasets"] == [{"path": str(setup["chips"]), "dataset": "custom", "chips": 8}]
    acc = quant["accuracy"]
    assert acc["split"] == "val" and acc["datasets"] == {"det": str(setup["chips"]), "seg": str(setup["chips"])}
    # the recorded numbers are what an independent evaluation of both files gives
    ref = evaluate_onnx(setup["fp32"], setup["chips"], setup["chips"], "val")
    red = evaluate_onnx(setup["int8"], setup["chips"], setup["chips"], "val")
    assert acc["fp32"]["seg_miou"] == pytest.approx(ref["seg_miou"]) and acc["reduced"]["det_ap50"] == pytest.approx(
        red["det_ap50"]
    )
    assert acc["delta_seg_miou"] == pytest.approx(100 * (red["seg_miou"] - ref["seg_miou"]), abs=1e-3)
    assert acc["delta_det_ap50"] == pytest.approx(100 * (red["det_ap50"] - ref["det_ap50"]), abs=1e-3)
    # pixel agreement recomputed by hand from the raw outputs on the val chips
    info = OnnxModel(setup["fp32"], device="cpu").info
    x = chips_to_tiles(np.load(setup["chips"] / "val" / "images.npy"), info, [0, 1, 2])
    agree = (_run(setup["fp32"], x)[0].argmax(1) == _run(setup["int8"], x)[0].argmax(1)).mean()
    assert acc["pixel_agreement"] == pytest.approx(agree, abs=1e-6)
    assert 0.8 < agree <= 1.0


def test_int8_parity_with_fp32_on_unseen_chips(setup):
    """On chips used neither for calibration nor for the recorded deltas, int8 stays as close as recorded."""
    acc = _props(setup["int8"])["quantization"]["accuracy"]
    (ref, red), agreement = compare_onnx([setup["fp32"], setup["int8"]], setup["chips"], setup["chips"], "test")
    assert agreement >= acc["pixel_agreement"] - 0.05
    assert abs(100 * (red["seg_miou"] - ref["seg_miou"])) <= abs(acc["delta_seg_miou"]) + 2.0
    assert abs(100 * (red["det_ap50"] - ref["det_ap50"])) <= abs(acc["delta_det_ap50"]) + 2.0
    x = _test_tiles(setup)
    (seg, scores, boxes), (seg32, scores32, boxes32) = _run(setup["int8"], x), _run(setup["fp32"], x)
    assert np.abs(scores - scores32).mean() < 0.05 and np.abs(seg - seg32).mean() < 0.1 * np.abs(seg32).mean()
    assert np.median(np.abs(boxes - boxes32)) < 2.0  # px, on a 64 px tile


def test_fp16_graph_types_and_cpu_run(setup):
    half = onnx.load(str(setup["fp16"]))
    types = {i.data_type for i in half.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types
    conv_weights = {n.input[1] for n in half.graph.node if n.op_type == "Conv"}
    stored = {i.name: i.data_type for i in half.graph.initializer if i.name in conv_weights}
    float32 = {name for name, dtype in stored.items() if dtype == onnx.TensorProto.FLOAT}
    assert len(stored) > 40 and float32 == {  # only the tail's 1x1 predictors stay float32
        "model.det_head.cls_tower.predictors.0.weight",
        "model.det_head.box_tower.predictors.0.weight",
        "model.seg_head.classifier.weight",
    }
    for value in [*half.graph.input, *half.graph.output]:
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 at the boundary
    meta = _props(setup["fp16"])
    assert meta["precision"] == "fp16" and meta["quantization"]["method"] == "float16"
    assert meta["quantization"]["accuracy"]["pixel_agreement"] > 0.99
    # onnxruntime's CPU provider runs float16 graphs: outputs as fp32's within float16 rounding
    x = _test_tiles(setup)
    (seg, scores, boxes), (seg32, scores32, boxes32) = _run(setup["fp16"], x), _run(setup["fp32"], x)
    assert np.abs(scores - scores32).max() < 0.02 and np.abs(boxes - boxes32).max() < 0.5
    assert np.abs(seg - seg32).max() < 0.02 * np.abs(seg32).max()
    assert OnnxModel(setup["fp16"], device="auto").provider in ("CPUExecutionProvider", "CUDAExecutionProvider")


def test_evaluate_onnx_equals_checkpoint_evaluation(setup):
    """fp32 ONNX scored like inference feeds it == the torch checkpoint scored by evaluate_model (same chips)."""
    net, _ = model_from_checkpoint(setup["ckpt"])
    torch_metrics = evaluate_model(net, setup["chips"], setup["chips"], "val", batch_size=4)
    onnx_metrics = evaluate_onnx(setup["fp32"], setup["chips"], setup["chips"], "val", batch_size=3)
    for key in ("seg_miou", "seg_oa", "det_map", "det_ap50"):
        assert onnx_metrics[key] == pytest.approx(torch_metrics[key], abs=0.005), key
    assert onnx_metrics["seg"]["confusion"] == torch_metrics["seg"]["confusion"]
    assert torch_metrics["det"]["per_class"]["building"]["num_pred"] > 0  # detections are really compared


def test_evaluate_cli_scores_an_onnx_model(setup, tmp_path, capsys):
    out = tmp_path / "report.json"
    argv = ["--model", str(setup["int8"]), "--seg-chips", str(setup["chips"]), "--split", "val", "--out", str(out)]
    assert evaluate_main(argv) == 0
    report = json.loads(out.read_text())
    assert report["inputs"]["model"] == str(setup["int8"]) and "det_map" not in report
    expected = evaluate_onnx(setup["int8"], None, setup["chips"], "val")
    assert report["seg_miou"] == pytest.approx(expected["seg_miou"])
    assert "segmentation: mIoU" in capsys.readouterr().out


def test_export_cli_int8_with_calibration_dir(setup, tmp_path, capsys):
    out = tmp_path / "new_folder" / "cli_int8.onnx"  # a folder that does not exist yet is made (int8 failed there)
    argv = ["--checkpoint", str(setup["moved"]), "--out", str(out), "--precision", "int8"]
    options = ["--calibration", str(setup["chips"]), "--calibration-chips", "3", "--eval-chips", "2"]
    assert export_main([*argv, *options]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["precision"] == "int8" and set(printed["accuracy_vs_fp32"]) >= {"delta_seg_miou", "pixel_agreement"}
    calib = _props(out)["quantization"]["calibration"]
    assert calib["chips"] == 3 and calib["datasets"][0]["path"] == str(setup["chips"])
    # the checkpoint's recorded chips are gone and none are given: a one-line error naming the way out
    assert export_main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "int8 needs calibration chips" in errors[0] and "--calibration" in errors[0]
    assert not out.with_name("missing.onnx").exists()


def _unlabelled_copy(chips: Path, out: Path) -> Path:
    """The chips' imagery as an ``engine.chip --task none`` dataset (no label arrays)."""
    manifest = json.loads((chips / "manifest.json").read_text())
    for split in manifest["splits"]:
        (out / split).mkdir(parents=True)
        shutil.copy(chips / split / "images.npy", out / split / "images.npy")
    manifest.update(task="none", arrays=["images"], dataset="town")
    for chip in manifest["chips"]:
        chip["boxes"] = []
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_int8_calibrates_on_unlabelled_chips_and_measures_each_task_on_its_own_dataset(setup, tmp_path):
    town = _unlabelled_copy(setup["chips"], tmp_path / "town")
    quick = {"calibration_chips": 4, "eval_chips": 2}
    meta = export_checkpoint(
        setup["moved"], tmp_path / "a.onnx", precision="int8", calibration=[town], quantization=quick
    )
    quant = meta["quantization"]
    assert quant["calibration"]["datasets"][0]["path"] == str(town) and quant["accuracy"] is None
    # listed first, a segmentation-only chip set measures segmentation only; detection is measured on the det set
    seg_only = tmp_path / "seg_only"
    shutil.copytree(setup["chips"], seg_only)
    manifest = json.loads((seg_only / "manifest.json").read_text())
    (seg_only / "manifest.json").write_text(json.dumps({**manifest, "task": "seg", "dataset": "potsdam"}))
    sources = given_sources([town, seg_only, setup["chips"]], {"det": {"dataset": manifest["dataset"]}})
    assert [s.tasks for s in sources] == [(), ("seg",), ("det",)]


def test_default_tile_holds_every_training_domains_chips(setup, tmp_path):
    payload = torch.load(setup["ckpt"], weights_only=True)
    scaling = payload["metadata"]["value_scaling"]
    domains = [
        {"task": t, "gsd": 0.09, "value_scaling": scaling, "chip_size": c} for t, c in (("det", 64), ("seg", 96))
    ]
    payload["metadata"] = {**payload["metadata"], "chip_size": 64, "domains": domains}
    save_checkpoint(tmp_path / "two.pt", payload)
    export_checkpoint(tmp_path / "two.pt", tmp_path / "two.onnx")
    info = OnnxModel(tmp_path / "two.onnx", device="cpu").info
    assert info.tile_size == 96 and info.gsd_range == (0.09, 0.09)


def test_bad_inputs_are_clear_errors(setup, tmp_path):
    with pytest.raises(ConfigError, match="'precision' must be one of"):
        export_checkpoint(setup["ckpt"], tmp_path / "x.onnx", precision="int4")
    with pytest.raises(InputError, match="expected a chip dataset folder"):
        export_checkpoint(setup["ckpt"], tmp_path / "x.onnx", precision="int8", calibration=[tmp_path])
    big = write_chip_dataset(tmp_path / "big", {"train": 1, "val": 1}, size=96)
    with pytest.raises(InputError, match="do not fit the model's 64 px tiles"):
        evaluate_onnx(setup["fp32"], None, big, "val")
    with pytest.raises(InputError, match="expected a split 'nope'"):
        evaluate_onnx(setup["fp32"], None, setup["chips"], "nope")
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*partial*"))


def test_int8_or_fp32_falls_back_below_the_agreement_target(setup, tmp_path):
    """The demo's rule: int8 only when its class maps agree with fp32 on enough validation pixels."""
    out = tmp_path / "map.onnx"
    quick = {"calibration_chips": 2, "eval_chips": 2}
    meta = export_int8_or_fp32(setup["ckpt"], out, min_agreement=1.01, quantization=quick)  # unreachable target
    assert meta["precision"] == "fp32" and _props(out)["precision"] == "fp32"
    rejected = meta["int8_rejected"]
    assert rejected["min_agreement"] == 1.01 and 0.0 <= rejected["accuracy"]["pixel_agreement"] <= 1.0


def _mosaic(path: Path, chips: Path) -> Path:
    """The 4 test chips as one 2×2 georeferenced ortho (128² px)."""
    images = np.load(chips / "test" / "images.npy")
    mosaic = np.concatenate([np.concatenate(images[:2], 1), np.concatenate(images[2:4], 1)], 0).transpose(2, 0, 1)
    ds = gdal.GetDriverByName("GTiff").Create(str(path), mosaic.shape[2], mosaic.shape[1], 3, gdal.GDT_Byte)
    ds.SetGeoTransform((500000.0, 0.09, 0.0, 5400000.0, 0.0, -0.09))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32632)
    ds.SetSpatialRef(srs)
    ds.WriteArray(mosaic)
    ds = None
    return path


def test_predict_runs_every_precision_and_says_when_fp16_runs_on_the_cpu(setup, tmp_path):
    ortho = _mosaic(tmp_path / "ortho.tif", setup["chips"])
    maps = {}
    for precision in ("fp32", "int8", "fp16"):
        out = tmp_path / f"classes_{precision}.tif"
        summary = predict_raster(setup[precision], ortho, out, tmp_path / f"det_{precision}.gpkg", device="auto")
        maps[precision] = gdal.Open(str(out)).ReadAsArray()
        on_cpu_fp16 = precision == "fp16" and summary.provider == "CPUExecutionProvider"
        assert any("fp16 model on the CPU provider" in w for w in summary.warnings) == on_cpu_fp16
    assert maps["fp32"].shape == (128, 128)
    assert (maps["fp16"] == maps["fp32"]).mean() > 0.99
    recorded = _props(setup["int8"])["quantization"]["accuracy"]["pixel_agreement"]
    assert (maps["int8"] == maps["fp32"]).mean() >= recorded - 0.05  # as close on an ortho as on the val chips


class _EchoModel:
    """Stands in for an OnnxModel: 'class' = the first input band's rounded value, so crops can be checked."""

    def __init__(self, info) -> None:
        self.info = info

    def run(self, tiles: np.ndarray):
        band = np.rint(tiles[:, 0]).astype(np.int64)
        seg = np.stack([(band == c).astype(np.float32) for c in range(6)], axis=1)
        return type("Out", (), {"seg": seg})()


def test_mosaic_packs_chips_and_crops_each_back(setup):
    """Segmentation chips run k×k per tile; every chip's class map is cropped from exactly where it was put."""
    import dataclasses

    from engine.evaluate.onnx_eval import _mosaic_classes, mosaic_chips

    base = OnnxModel(setup["fp32"], device="cpu").info
    info = dataclasses.replace(base, tile_size=200, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), value_max=1.0)
    rng = np.random.default_rng(0)
    chips = rng.integers(0, 6, (11, 64, 64, 3)).astype(np.uint8)  # 3×3 chips a tile: 2 tiles, the last partly
    tiles, slots = mosaic_chips(chips, info, [0, 1, 2])
    assert tiles.shape == (2, 3, 200, 200) and slots[:4] == [(0, 0, 0), (0, 0, 64), (0, 0, 128), (0, 64, 0)]
    assert slots[9] == (1, 0, 0) and np.all(tiles[:, :, 192:, :] == 0) and np.all(tiles[1, :, 64:, :] == 0)
    classes = _mosaic_classes(_EchoModel(info), chips, [0, 1, 2])
    np.testing.assert_array_equal(classes, chips[..., 0])
