"""Fine-tuning from a pmtl checkpoint: class-table remap, provenance, untrained heads, GSD rule, the CLI loop
(chip at the model's GSD inside the labelled extent → train → ONNX) and its one-line errors."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from osgeo import gdal, ogr

from engine.core.errors import ConfigError
from engine.data.chipstore import open_chip_dataset
from engine.finetune.__main__ import main as finetune_main
from engine.finetune.options import from_namespace
from engine.finetune.prepare import extent_aoi
from engine.models import build_model
from engine.models.checkpoint import load_checkpoint
from engine.models.config import ModelConfig
from engine.models.transfer import class_pairs, first_conv, remap_rows, transfer_weights
from engine.train.config import load_config
from engine.train.loop import train
from engine.train.setup import student_network
from tests.chipfixtures import write_chip_dataset
from tests.test_labels_chip import ORIGIN, utm
from tests.test_labels_train import TINY

gdal.UseExceptions()
ogr.UseExceptions()

SMALL = ModelConfig(channels=16, seg_channels=16, num_det_classes=3, num_seg_classes=3)
START_GSD = 0.09


def test_class_rows_follow_names_per_anchor_block():
    assert class_pairs(["building", "tree", "car"], ["car", "boat", "building"]) == [(0, 2), (2, 0)]
    old = torch.arange(6.0)  # 2 anchors × 3 classes: rows a0:building,tree,car a1:building,tree,car
    fresh = torch.full((6,), -1.0)  # 2 anchors × (car, boat, building)
    out = remap_rows(old, fresh, class_pairs(["building", "tree", "car"], ["car", "boat", "building"]), groups=2)
    assert out.tolist() == [2.0, -1.0, 0.0, 5.0, -1.0, 3.0]


def test_first_conv_keeps_named_bands_and_sums_into_other_ones():
    old = torch.ones(2, 3, 1, 1) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)  # nir, red, green filters
    assert torch.equal(first_conv(old, ["nir", "red", "green"], ["nir", "red", "green"]), old)
    pan = first_conv(old, ["nir", "red", "green"], ["pan"])
    assert pan.shape == (2, 1, 1, 1) and pan.flatten().tolist() == [6.0, 6.0]  # 1 + 2 + 3: pan = all bands equal
    two = first_conv(old, ["nir", "red", "green"], ["red", "swir"])
    assert two[0, :, 0, 0].tolist() == [2.0, 3.0]  # red kept; swir = mean 2 × 3/2


def test_transfer_copies_the_encoder_and_class_rows_by_name():
    torch.manual_seed(0)
    source = build_model(SMALL)
    target = build_model(SMALL)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    report = transfer_weights(
        target,
        source.state_dict(),
        {"det": ["building", "tree", "car"], "seg": ["impervious", "building", "tree"]},
        {"det": ["car", "boat", "building"], "seg": ["background", "building", "tree"]},
        (["r", "g", "b"], ["r", "g", "b"]),
    )
    got, src = target.state_dict(), source.state_dict()
    assert all(torch.equal(got[k], src[k]) for k in got if k.startswith(("backbone.", "neck.")))
    assert torch.equal(got["det_head.box_tower.convs.0.0.weight"], src["det_head.box_tower.convs.0.0.weight"])
    key = "det_head.cls_tower.predictors.0.bias"
    for anchor in range(SMALL.num_anchors):
        assert got[key][anchor * 3 + 0] == src[key][anchor * 3 + 2]  # car ← car
        assert got[key][anchor * 3 + 1] == fresh[key][anchor * 3 + 1]  # boat: fresh (focal prior)
        assert got[key][anchor * 3 + 2] == src[key][anchor * 3 + 0]  # building ← building
    seg = "seg_head.classifier.weight"
    assert torch.equal(got[seg][0], fresh[seg][0]) and torch.equal(got[seg][1:], src[seg][1:])
    assert report.kept_classes == {"det": ["car", "building"], "seg": ["building", "tree"]}
    assert report.new_classes == {"det": ["boat"], "seg": ["background"]}


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> dict[str, Path]:
    """A tiny partial-MTL checkpoint (ISPRS classes, nir/red/green, 64 px chips at 9 cm)."""
    base = tmp_path_factory.mktemp("start")
    chips = write_chip_dataset(base / "chips", {"train": 4, "val": 2}, size=64, seed=1)
    model = base / "small.yaml"
    model.write_text("{backbone: resnet18, neck: fpn, channels: 16, seg_channels: 16}\n")
    cfg = load_config(None, [*TINY, f"model={model}", f"data.det={chips}", f"data.seg={chips}",
                             f"runtime.out={base / 'run'}"])  # fmt: skip
    return {"chips": chips, "best": train(cfg).best_checkpoint, "base": base}


def _det_chips(start: dict[str, Path], name: str, classes: list[str], gsd: float = START_GSD) -> Path:
    """The start's chips with another detection class table (boxes renamed) and GSD."""
    root = write_chip_dataset(start["base"] / name, {"train": 4, "val": 2}, size=64, seed=5)
    manifest = json.loads((root / "manifest.json").read_text())
    rename = dict(zip(["building", "tree", "car"], classes))
    for chip in manifest["chips"]:
        chip["boxes"] = [[*b[:4], rename[b[4]]] for b in chip["boxes"]]
    manifest.update(det_classes=classes, det_palette=[[255, 0, 0]] * len(classes), gsd=gsd, task="det")
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _init_cfg(start: dict[str, Path], chips: Path, out: Path, *extra: str) -> dict:
    return load_config(None, [*TINY, "tasks=[det]", f"data.det={chips}", f"init.checkpoint={start['best']}",
                              f"runtime.out={out}", *extra])  # fmt: skip


def test_a_run_from_a_checkpoint_starts_from_its_weights_with_the_new_class_table(start, tmp_path: Path):
    chips = _det_chips(start, "renamed", ["car", "boat", "building"])
    cfg = _init_cfg(start, chips, tmp_path / "ft")
    manifests = {"det": open_chip_dataset(chips).manifest}
    model_cfg, net, _, meta = student_network(cfg, manifests)
    saved = load_checkpoint(start["best"])["model"]
    assert model_cfg.channels == 16 and model_cfg.tasks == ("det",) and net.seg_head is None  # seg head dropped
    got = net.state_dict()
    assert all(torch.equal(got[k], saved[k]) for k in got if k.startswith(("backbone.", "neck.")))
    key = "det_head.cls_tower.predictors.0.bias"
    assert got[key][2] == saved[key][0] and got[key][0] == saved[key][2]  # building, car moved by name
    assert meta["init"]["new_classes"] == {"det": ["boat"]} and meta["init"]["fresh_heads"] == []


def test_provenance_and_a_kept_untrained_head_reach_checkpoint_and_onnx(start, tmp_path: Path):
    from engine.export import export_checkpoint

    chips = _det_chips(start, "same", ["building", "tree", "car"])
    result = train(_init_cfg(start, chips, tmp_path / "ft", "init.untrained_heads=keep", "init.frozen_stages=2"))
    payload = load_checkpoint(result.best_checkpoint)
    init = payload["metadata"]["init"]
    assert init["checkpoint"] == str(Path(start["best"]).resolve()) and len(init["sha256"]) == 64
    assert init["classes"]["det"] == ["building", "tree", "car"] and init["parent"] is None
    assert payload["model_config"]["tasks"] == ["det", "seg"]  # the seg head is kept, untrained
    before = load_checkpoint(start["best"])["model"]
    seg = [k for k in before if k.startswith("seg_head.")]
    assert all(torch.equal(payload["model"][k], before[k]) for k in seg)
    assert torch.equal(payload["model"]["backbone.layer1.0.conv1.weight"], before["backbone.layer1.0.conv1.weight"])
    assert not torch.equal(payload["model"]["backbone.layer2.0.conv1.weight"], before["backbone.layer2.0.conv1.weight"])
    assert payload["metadata"]["seg_classes"] == load_checkpoint(start["best"])["metadata"]["seg_classes"]
    meta = export_checkpoint(result.best_checkpoint, tmp_path / "m.onnx", tile_size=64)
    assert meta["provenance"]["init"]["sha256"] == init["sha256"] and meta["tasks"] == ["det", "seg"]


def test_chips_at_another_gsd_than_the_checkpoint_are_refused(start, tmp_path: Path):
    chips = _det_chips(start, "coarse", ["building", "tree", "car"], gsd=0.3)
    with pytest.raises(ConfigError, match=r"chips at 0.3 m.*works at 0.09 m.*init.allow_new_gsd"):
        student_network(_init_cfg(start, chips, tmp_path / "x"), {"det": open_chip_dataset(chips).manifest})
    cfg = _init_cfg(start, chips, tmp_path / "y", "init.allow_new_gsd=true")
    student_network(cfg, {"det": open_chip_dataset(chips).manifest})  # the user said so


def test_init_config_values_are_checked():
    with pytest.raises(ConfigError, match=r"init\.untrained_heads"):
        load_config(None, ["data.det=x", "data.seg=y", "init.untrained_heads=maybe"])
    with pytest.raises(ConfigError, match=r"init\.frozen_stages"):
        load_config(None, ["data.det=x", "data.seg=y", "init.frozen_stages=9"])


# --- the CLI on a georeferenced raster with polygons -------------------------------------------------------------

RASTER_GSD = 0.18  # twice the model's: the CLI resamples to 0.09 m
HOUSES = [(8, 8, 32, 28), (80, 12, 104, 36), (16, 80, 40, 104), (88, 88, 116, 112), (52, 48, 72, 68)]  # px, 0.18 m


def _map(x: float, y: float) -> tuple[float, float]:
    return ORIGIN[0] + x * RASTER_GSD, ORIGIN[1] - y * RASTER_GSD


def _raster(path: Path, size: int = 128, gain: int = 1) -> Path:
    """Houses bright on dark ground; ``gain`` 16 gives 12-bit values in uint16."""
    dtype = np.uint8 if gain == 1 else np.uint16
    image = np.full((3, size, size), 60 * gain, dtype)
    for x0, y0, x1, y1 in HOUSES:
        image[:, y0:y1, x0:x1] = 200 * gain
    gdal_type = gdal.GDT_Byte if gain == 1 else gdal.GDT_UInt16
    ds = gdal.GetDriverByName("GTiff").Create(str(path), size, size, 3, gdal_type)
    ds.SetGeoTransform((ORIGIN[0], RASTER_GSD, 0, ORIGIN[1], 0, -RASTER_GSD))
    ds.SetProjection(utm().ExportToWkt())
    for b in range(3):
        ds.GetRasterBand(b + 1).WriteArray(image[b])
    ds = None
    return path


def _polygons(path: Path, boxes, names, shift: float = 0.0) -> Path:
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = ds.CreateLayer("detections", utm(), ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("class", ogr.OFTString))
    for (x0, y0, x1, y1), name in zip(boxes, names):
        ring = ogr.Geometry(ogr.wkbLinearRing)
        for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)):
            mx, my = _map(x, y)
            ring.AddPoint_2D(mx + shift, my)
        polygon = ogr.Geometry(ogr.wkbPolygon)
        polygon.AddGeometry(ring)
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(polygon)
        feature.SetField("class", name)
        layer.CreateFeature(feature)
    ds = None
    return path


def test_extent_aoi_is_the_envelope_of_the_labels(tmp_path: Path):
    labels = _polygons(tmp_path / "l.gpkg", HOUSES[:2], ["building", "building"])
    ds = ogr.Open(str(extent_aoi(str(labels), tmp_path / "aoi.gpkg")))
    envelope = ds.GetLayer(0).GetExtent()  # (minx, maxx, miny, maxy)
    x0, y1 = _map(8, 36)
    x1, y0 = _map(104, 8)
    assert envelope == pytest.approx((x0, x1, y1, y0))


@pytest.mark.slow
def test_cli_fine_tunes_at_the_model_gsd_inside_the_labelled_extent(start, tmp_path: Path, capsys):
    raster = _raster(tmp_path / "ortho.tif")
    names = ["building", "building", "shed", "building", "building"]  # 'shed' is new to the model
    labels = _polygons(tmp_path / "edited.gpkg", HOUSES, names)
    out = tmp_path / "ft"
    code = finetune_main(["--checkpoint", str(start["best"]), "--image", str(raster), "--labels", str(labels),
                          "--class-field", "class", "--task", "det", "--out", str(out), "--steps", "3",
                          "--size", "64", "--holdout", "0.3", "--batch-size", "2", "--device", "cpu"])  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    printed = printed.out
    assert "det_ap50:" in printed and "→" in printed
    report = json.loads((out / "finetune.json").read_text())
    assert set(report["before"]) >= {"det_ap50", "det_map"} and set(report["after"]) >= {"det_ap50", "det_map"}
    manifest = open_chip_dataset(out / "chips").manifest
    assert manifest["gsd"] == pytest.approx(START_GSD) and manifest["det_classes"] == ["building", "shed"]
    extent_px = (8 * 2, 8 * 2, 116 * 2, 112 * 2)  # the labels' envelope at 0.09 m
    for chip in manifest["chips"]:  # detection chips lie wholly inside the labelled extent
        x, y, w, h = chip["window"]
        assert extent_px[0] <= x and x + w <= extent_px[2] and extent_px[1] <= y and y + h <= extent_px[3]
    props = {p.key: json.loads(p.value) for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert props["provenance"]["init"]["new_classes"] == {"det": ["shed"]}
    assert props["provenance"]["checkpoint"] == str(out / "best.pt") and props["gsd"] == pytest.approx(START_GSD)
    again = finetune_main(["--checkpoint", str(out / "model.onnx"), "--image", str(raster), "--labels",
                           str(labels), "--task", "det", "--out", str(out)])  # fmt: skip
    assert again == 2 and "already holds a training run" in capsys.readouterr().err


def test_the_16_bit_warning_names_an_option_of_finetune_and_the_option_scales_the_chips(tmp_path: Path, caplog):
    from engine.core.errors import log_params_as_flags
    from engine.finetune.__main__ import build_parser
    from engine.finetune.options import FinetuneOptions
    from engine.finetune.prepare import chip_labels

    raster = _raster(tmp_path / "ortho12bit.tif", gain=16)  # values up to 3200 in uint16
    labels = _polygons(tmp_path / "edited.gpkg", HOUSES, ["building"] * len(HOUSES))
    common = {"checkpoint": "best.pt", "images": [str(raster)], "labels": str(labels), "size": 64, "holdout": 0.3}
    with log_params_as_flags(), caplog.at_level(logging.WARNING):  # parameters named as the finetune CLI names them
        chip_labels(FinetuneOptions(**common, out=str(tmp_path / "a")), START_GSD, 64, "building", None)
    named = re.findall(r"set (--[a-z-]+)", caplog.text)
    assert named == ["--scale-max"], caplog.text
    assert set(named) <= {flag for action in build_parser()._actions for flag in action.option_strings}
    caplog.clear()
    given = {
        "--checkpoint": "best.pt",
        "--image": raster,
        "--labels": labels,
        "--out": tmp_path / "b",
        "--holdout": 0.3,
    }
    args = build_parser().parse_args([str(x) for item in given.items() for x in item] + ["--scale-max", "4095"])
    chips, _ = chip_labels(from_namespace(args), START_GSD, 64, "building", None)
    assert "scaled by a maximum" not in caplog.text
    assert open_chip_dataset(chips).manifest["value_scaling"] == {"dtype": "uint16", "max": 4095.0}


def _error(capsys, *argv: str) -> str:
    assert finetune_main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_cli_one_line_errors(start, tmp_path: Path, capsys):
    raster = _raster(tmp_path / "ortho.tif")
    labels = _polygons(tmp_path / "edited.gpkg", HOUSES, ["building"] * 5)
    far = _polygons(tmp_path / "far.gpkg", HOUSES, ["building"] * 5, shift=10_000.0)
    common = ["--image", str(raster), "--task", "det", "--size", "64"]
    ckpt = ["--checkpoint", str(start["best"])]
    err = _error(capsys, *ckpt, *common, "--labels", str(far), "--out", str(tmp_path / "a"))
    assert "far.gpkg" in err and "overlap" in err
    err = _error(capsys, *ckpt, *common, "--labels", str(labels), "--class-field", "kind", "--out", str(tmp_path / "b"))
    assert "'kind'" in err and "class" in err
    plain = tmp_path / "resnet.pt"
    torch.save({"conv.weight": torch.zeros(1)}, plain)
    err = _error(capsys, "--checkpoint", str(plain), *common, "--labels", str(labels), "--out", str(tmp_path / "c"))
    assert "resnet.pt" in err and "pmtl checkpoint" in err
    bare = tmp_path / "other.onnx"
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), str(bare))
    err = _error(capsys, "--checkpoint", str(bare), *common, "--labels", str(labels), "--out", str(tmp_path / "d"))
    assert "other.onnx" in err and "provenance.checkpoint" in err
    assert not (tmp_path / "a" / "model.onnx").exists()


class CancelAfter:
    """A Progress that asks to cancel once training has reported ``after`` times (chipping reports first)."""

    def __init__(self, after: int) -> None:
        self.after, self.training_reports, self.messages = after, 0, []

    def report(self, fraction: float | None, message: str = "") -> None:
        self.messages.append(message)
        if fraction is not None and fraction > 0.15:  # the training share of the bar (engine.finetune.run)
            self.training_reports += 1

    def is_canceled(self) -> bool:
        return self.training_reports >= self.after


def test_cancel_during_training_stops_without_a_model(start, tmp_path: Path):
    from engine.core.progress import Cancelled
    from engine.finetune.options import FinetuneOptions
    from engine.finetune.run import finetune

    raster = _raster(tmp_path / "ortho.tif")
    labels = _polygons(tmp_path / "edited.gpkg", HOUSES, ["building"] * len(HOUSES))
    opts = FinetuneOptions(
        checkpoint=str(start["best"]),
        images=[str(raster)],
        labels=str(labels),
        out=str(tmp_path / "ft"),
        steps=50,
        size=64,
        holdout=0.3,
        batch_size=2,
        device="cpu",
    )
    progress = CancelAfter(2)
    with pytest.raises(Cancelled):
        finetune(opts, progress)
    assert progress.training_reports == 2 and any("chipping" in m for m in progress.messages)
    assert not (tmp_path / "ft" / "model.onnx").exists() and not (tmp_path / "ft" / "best.pt").exists()
