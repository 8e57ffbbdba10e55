"""``python -m engine.evaluate`` end to end on tiny chip sets and a tiny student whose answers are known by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from chipfixtures import chip_objects, write_chip_dataset

from engine.core.classes import DET_CLASSES, IGNORE_INDEX, SEG_CLASSES
from engine.evaluate.__main__ import main
from engine.models import ModelConfig, build_model
from engine.viz.samples import predict_samples, spread_indices

ROOT = Path(__file__).resolve().parents[1]
IMPERVIOUS = SEG_CLASSES.index("impervious")
VAL = 2


def _save(path: Path, cfg: ModelConfig, net: torch.nn.Module | None = None) -> Path:
    net = net or build_model(cfg)
    torch.save({"model_config": cfg.to_dict(), "model": net.state_dict(), "ema": None}, path)
    return path


def _known_net(cfg: ModelConfig, det_class: int | None = None) -> torch.nn.Module:
    """Constant heads: every pixel 'impervious'; no detection at all, or every anchor a sure ``det_class``."""
    torch.manual_seed(0)
    net = build_model(cfg)
    with torch.no_grad():
        if net.seg_head is not None:
            net.seg_head.classifier.weight.zero_()
            net.seg_head.classifier.bias.zero_()
            net.seg_head.classifier.bias[IMPERVIOUS] = 5.0
        if net.det_head is not None:
            for predictor in net.det_head.cls_tower.predictors:
                predictor.weight.zero_()
                bias = predictor.bias.view(cfg.num_anchors, cfg.num_det_classes)
                bias.fill_(-20.0)
                if det_class is not None:
                    bias[:, det_class] = 20.0
            for predictor in net.det_head.box_tower.predictors:
                predictor.weight.zero_()
                predictor.bias.zero_()
    return net


TINY = {"channels": 32, "seg_channels": 16}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("evalcli")
    det = write_chip_dataset(base / "det", splits={"train": 2, "val": VAL}, seed=1)
    seg = write_chip_dataset(base / "seg", splits={"train": 2, "val": VAL}, seed=2, bands=("red", "green", "blue"))
    cfg = ModelConfig(**TINY)
    return {
        "base": base,
        "det": det,
        "seg": seg,
        "known": _save(base / "known.pt", cfg, _known_net(cfg)),
        "det_only": _save(base / "det_only.pt", ModelConfig(tasks=("det",), **TINY)),
        "four_band": _save(base / "four_band.pt", ModelConfig(in_channels=4, **TINY)),
        "mismatch": _save(base / "mismatch.pt", cfg, build_model(ModelConfig(channels=16, seg_channels=16))),
    }


def _expected_miou(seg_root: Path) -> float:
    """mIoU of an all-impervious prediction on the eroded val masks: only impervious has a non-zero IoU."""
    eroded = np.load(seg_root / "val" / "eroded.npy")
    valid = eroded[eroded != IGNORE_INDEX]
    present = set(np.unique(valid).tolist()) | {IMPERVIOUS}
    return float(np.mean(valid == IMPERVIOUS)) / len(present)


def test_cli_end_to_end_report_table_and_picture(setup, tmp_path, capsys):
    out, png = tmp_path / "report.json", tmp_path / "samples.png"
    args = ["--checkpoint", str(setup["known"]), "--det-chips", str(setup["det"]), "--seg-chips", str(setup["seg"])]
    args += ["--batch-size", "2", "--samples", "1", "--out", str(out), "--png", str(png), "--device", "cpu"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "detection: mAP" in printed and "segmentation: mIoU" in printed
    report = json.loads(out.read_text())
    for key in ("det_map", "det_ap50", "seg_miou", "seg_oa"):
        assert 0.0 <= report[key] <= 1.0
    assert report["det_map"] == 0.0  # no detection at all
    per_class = report["det"]["per_class"]
    for name in DET_CLASSES:
        assert per_class[name]["num_pred"] == 0
        assert per_class[name]["num_gt"] == sum(o[4] == name for i in range(VAL) for o in chip_objects(i))
    assert report["seg_miou"] == pytest.approx(_expected_miou(setup["seg"]), abs=1e-9)
    assert report["inputs"]["split"] == "val" and report["inputs"]["model_config"]["channels"] == 32
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "samples.png"]


def test_predict_samples_decodes_onto_anchors(setup):
    """Box deltas of zero decode to the anchors themselves: every prediction is a clipped anchor of class 1."""
    cfg = ModelConfig(**TINY)
    net = _known_net(cfg, det_class=1)
    samples = predict_samples(net, setup["det"], "val", count=2)
    assert len(samples) == 2 and samples.titles[0].startswith("val #0")
    anchors = net.anchors_for((64, 64)).clamp(0, 64)
    for boxes, scores, labels, mask in zip(
        samples.pred_boxes, samples.pred_scores, samples.pred_labels, samples.pred_masks
    ):
        assert len(boxes) > 0 and np.all(labels == 1) and np.all(scores > 0.99)
        distance = torch.cdist(torch.from_numpy(boxes), anchors).min(dim=1).values
        assert float(distance.max()) < 0.05  # float32 round-off on anchors of hundreds of px
        assert np.all(mask == IMPERVIOUS)
    np.testing.assert_array_equal(samples.gt_masks[1], np.load(setup["det"] / "val" / "masks.npy")[1])


def test_spread_indices_cover_the_split_evenly():
    assert spread_indices(10, 4) == [0, 3, 6, 9]
    assert spread_indices(2, 5) == [0, 1]
    assert spread_indices(0, 3) == []


def test_module_entry_point_exits_2_on_bad_input(setup, tmp_path):
    command = [
        sys.executable,
        "-m",
        "engine.evaluate",
        "--checkpoint",
        str(setup["known"]),
        "--out",
        str(tmp_path / "r"),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "error: give at least one chip dataset" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("seg_on_det_only", ["no segmentation head", "--seg-chips"]),
        ("missing_checkpoint", ["nope.pt", "does not exist"]),
        ("missing_chips", ["absent", "manifest.json"]),
        ("no_chips", ["--det-chips DIR and/or --seg-chips DIR"]),
        ("band_mismatch", ["3 bands", "4 input channels"]),
        ("unknown_split", ["'test'", "splits"]),
        ("weights_mismatch", ["mismatch.pt", "do not fit its model_config"]),
        ("out_is_a_folder", ["--out", "found a folder"]),
    ],
)
def test_cli_bad_input_exits_2_with_a_clear_message(setup, tmp_path, capsys, case, expected):
    det, seg, base = str(setup["det"]), str(setup["seg"]), setup["base"]
    args = {
        "seg_on_det_only": ["--checkpoint", str(setup["det_only"]), "--det-chips", det, "--seg-chips", seg],
        "missing_checkpoint": ["--checkpoint", str(base / "nope.pt"), "--det-chips", det],
        "missing_chips": ["--checkpoint", str(setup["known"]), "--det-chips", str(base / "absent")],
        "no_chips": ["--checkpoint", str(setup["known"])],
        "band_mismatch": ["--checkpoint", str(setup["four_band"]), "--seg-chips", seg],
        "unknown_split": ["--checkpoint", str(setup["known"]), "--det-chips", det, "--split", "test"],
        "weights_mismatch": ["--checkpoint", str(setup["mismatch"]), "--det-chips", det],
        "out_is_a_folder": ["--checkpoint", str(setup["known"]), "--det-chips", det],
    }[case]
    out = tmp_path / "r.json"
    if case == "out_is_a_folder":
        out = base
    assert main([*args, "--out", str(out), "--png", str(tmp_path / "s.png"), "--device", "cpu"]) == 2
    message = capsys.readouterr().err
    assert message.startswith("error: ")
    for fragment in expected:
        assert fragment in message
    assert list(tmp_path.iterdir()) == []
