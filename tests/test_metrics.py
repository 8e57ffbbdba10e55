"""Evaluation metrics against answers computed by hand (engine/evaluate)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.core.errors import ConfigError, InputError
from engine.evaluate import DetectionMeter, SegmentationMeter, all_point_ap, format_table, write_report
from engine.evaluate.detection import f1_optimal_score
from engine.models.postprocess import postprocess_detections
from engine.predict.detections import tile_detections

# ---------------------------------------------------------------- segmentation

# 4×4 case with 3 classes; the last row's first two pixels are ignored (255) and predicted wrong on purpose.
TARGET = [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [255, 255, 0, 1]]
PRED = [[0, 1, 1, 1], [0, 0, 1, 2], [2, 2, 1, 2], [1, 2, 0, 1]]
# Confusion by hand (rows GT, cols pred): GT0 → 4×0, 1×1; GT1 → 4×1, 1×2; GT2 → 1×1, 3×2. 14 valid px, 11 correct.
HAND_CONFUSION = [[4, 1, 0], [0, 4, 1], [0, 1, 3]]


def test_segmentation_perfect() -> None:
    target = torch.tensor([[[0, 1, 2], [3, 4, 5]], [[5, 4, 3], [2, 1, 0]]])
    meter = SegmentationMeter(6)
    meter.update(target.clone(), target)
    m = meter.compute()
    assert m["miou"] == 1.0 and m["oa"] == 1.0 and m["mean_f1"] == 1.0
    assert m["iou"]["car"] == 1.0 and m["num_pixels"] == 12


def test_segmentation_hand_confusion_and_ignore() -> None:
    meter = SegmentationMeter(3)
    meter.update(torch.tensor([PRED]), torch.tensor([TARGET]))
    m = meter.compute()
    assert m["confusion"] == HAND_CONFUSION
    assert m["num_pixels"] == 14  # the two 255 pixels are not counted
    # IoU = TP / (TP + FP + FN): class 0: 4/(4+0+1), class 1: 4/(4+2+1), class 2: 3/(3+1+1)
    assert m["iou"]["class_0"] == pytest.approx(4 / 5)
    assert m["iou"]["class_1"] == pytest.approx(4 / 7)
    assert m["iou"]["class_2"] == pytest.approx(3 / 5)
    assert m["miou"] == pytest.approx((4 / 5 + 4 / 7 + 3 / 5) / 3)
    assert m["oa"] == pytest.approx(11 / 14)
    # F1 = 2TP / (2TP + FP + FN)
    assert m["f1"]["class_0"] == pytest.approx(8 / 9)
    assert m["f1"]["class_1"] == pytest.approx(8 / 11)
    assert m["f1"]["class_2"] == pytest.approx(6 / 8)
    assert m["mean_f1"] == pytest.approx((8 / 9 + 8 / 11 + 6 / 8) / 3)


def test_segmentation_logits_and_accumulation_match_labels() -> None:
    pred = torch.tensor([PRED])
    logits = F.one_hot(pred, 3).permute(0, 3, 1, 2).float() * 5.0 - 1.0
    by_logits = SegmentationMeter(3)
    by_logits.update(logits, np.array([TARGET], dtype=np.uint8))
    assert by_logits.compute()["confusion"] == HAND_CONFUSION
    # Two half-batches (numpy, unbatched) accumulate to the same matrix.
    halves = SegmentationMeter(3)
    halves.update(np.array(PRED[:2]), np.array(TARGET[:2]))
    halves.update(np.array(PRED[2:]), np.array(TARGET[2:]))
    assert halves.compute()["confusion"] == HAND_CONFUSION


def test_segmentation_absent_classes() -> None:
    # 4 classes; GT is all class 0; one pixel predicted as class 3; classes 1 and 2 appear nowhere.
    meter = SegmentationMeter(4)
    meter.update(torch.tensor([[0, 0], [0, 3]]), torch.tensor([[0, 0], [0, 0]]))
    m = meter.compute()
    assert m["iou"]["class_0"] == pytest.approx(3 / 4)
    assert m["iou"]["class_3"] == 0.0  # absent from GT but predicted: IoU 0, counted
    assert m["iou"]["class_1"] is None and m["iou"]["class_2"] is None  # absent from both: excluded
    assert m["miou"] == pytest.approx((3 / 4 + 0.0) / 2)
    assert m["f1"]["class_1"] is None
    assert m["mean_f1"] == pytest.approx((6 / 7 + 0.0) / 2)


def test_segmentation_bad_input() -> None:
    meter = SegmentationMeter(3)
    with pytest.raises(InputError, match="class ids"):
        meter.update(torch.tensor([[0, 3]]), torch.tensor([[0, 1]]))
    with pytest.raises(InputError, match="class ids"):
        meter.update(torch.tensor([[0, 1]]), torch.tensor([[0, 7]]))
    with pytest.raises(InputError, match="does not match"):
        meter.update(torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 3, 2, dtype=torch.long))
    with pytest.raises(InputError, match="channels"):
        meter.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ConfigError, match="ignore_index"):
        SegmentationMeter(3, ignore_index=1)
    assert meter.compute()["num_pixels"] == 0 and meter.compute()["miou"] is None


# ---------------------------------------------------------------- detection

BOX_A = [0.0, 0.0, 10.0, 10.0]
BOX_FAR = [50.0, 50.0, 60.0, 60.0]
BOX_FAR2 = [80.0, 0.0, 90.0, 10.0]


def _det(meter: DetectionMeter, boxes, scores, labels, gt_boxes, gt_labels) -> None:
    meter.update(
        np.array(boxes, dtype=np.float32).reshape(-1, 4),
        np.array(scores, dtype=np.float32),
        np.array(labels, dtype=np.int64),
        np.array(gt_boxes, dtype=np.float32).reshape(-1, 4),
        np.array(gt_labels, dtype=np.int64),
    )


def test_detection_perfect() -> None:
    meter = DetectionMeter()
    gt = torch.tensor([BOX_A, BOX_FAR, BOX_FAR2])
    labels = torch.tensor([0, 1, 2])
    for _ in range(2):
        meter.update(gt, torch.tensor([0.9, 0.8, 0.7]), labels, gt, labels)
    m = meter.compute()
    assert m["map"] == 1.0 and m["ap50"] == 1.0 and m["ap75"] == 1.0
    assert m["per_class"]["car"]["ap"] == [1.0] * 10
    assert m["per_class"]["tree"]["num_gt"] == 2 and m["num_images"] == 2
    assert m["iou_thresholds"][5] == 0.75


def test_detection_shifted_box() -> None:
    # Shift by 2 px: intersection 8×10 = 80, union 100 + 100 − 80 = 120, IoU = 2/3.
    # TP at thresholds 0.50, 0.55, 0.60, 0.65 (4 of 10), FP above → mAP = 4/10.
    meter = DetectionMeter(["building"])
    _det(meter, [[2, 0, 12, 10]], [0.9], [0], [BOX_A], [0])
    m = meter.compute()
    assert m["per_class"]["building"]["ap"] == [1.0] * 4 + [0.0] * 6
    assert m["map"] == pytest.approx(0.4)
    assert m["ap50"] == 1.0 and m["ap75"] == 0.0


def test_detection_hand_pr_curve() -> None:
    # 2 GT; TP (0.9), FP (0.8), TP (0.7): precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    # All-point: 0.5·1 + 0.5·(2/3) = 0.8333…
    meter = DetectionMeter(["building"])
    _det(meter, [BOX_A, BOX_FAR2, BOX_FAR], [0.9, 0.8, 0.7], [0, 0, 0], [BOX_A, BOX_FAR], [0, 0])
    m = meter.compute()
    assert m["map"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_f1_optimal_score_threshold_by_hand() -> None:
    # 3 objects; by score TP (.9) FP (.8) TP (.6) FP (.3): F1 = 2·TP / (kept + 3) = 2/4, 2/5, 4/6, 4/7 → keep ≥ .6
    scores, hits = np.array([0.3, 0.9, 0.6, 0.8]), np.array([False, True, True, False])
    assert f1_optimal_score(scores, hits, 3) == (pytest.approx(0.6), pytest.approx(2 / 3))
    # a threshold keeps every detection of its score: the two at .5 (TP, FP) go together, F1 4/5 — not the 4/4
    # that cutting between them would claim
    assert f1_optimal_score(np.array([0.9, 0.5, 0.5]), np.array([True, True, False]), 2) == (0.5, pytest.approx(0.8))
    assert f1_optimal_score(np.array([0.9]), np.array([False]), 2) == (None, 0.0)


def test_map_threshold_keeps_exactly_the_detections_the_f1_was_counted_on() -> None:
    # the F1 threshold is the lowest kept score: the map (numpy) and the torch evaluation keep that detection too
    scores = np.array([0.9, 0.8, 0.6, 0.3], np.float32)
    thresh, _ = f1_optimal_score(scores.astype(np.float64), np.array([True, False, True, False]), 3)
    graph_scores = scores[:, None]  # 4 anchors × 1 class, as the ONNX graph returns them
    boxes = np.array([[0, 0, 4, 4], [10, 0, 14, 4], [20, 0, 24, 4], [30, 0, 34, 4]], np.float32)
    _, kept, _ = tile_detections(graph_scores, boxes, thresh, 0.5, 64)
    assert sorted(kept.tolist()) == pytest.approx([0.6, 0.8, 0.9])
    logits = torch.logit(torch.tensor(scores, dtype=torch.float64)).float().view(1, 4, 1)
    anchors = torch.tensor(boxes)
    torch_kept = postprocess_detections(
        logits, torch.zeros(1, 4, 4), anchors, score_threshold=float(torch.sigmoid(logits[0, 2, 0]))
    )
    assert len(torch_kept[0]["scores"]) == 3


def test_meter_reports_each_classes_best_f1_threshold() -> None:
    meter = DetectionMeter(["building", "car"])
    _det(meter, [BOX_A, BOX_FAR2, BOX_FAR], [0.9, 0.8, 0.7], [0, 0, 0], [BOX_A, BOX_FAR], [0, 0])
    per_class = meter.compute()["per_class"]
    # TP .9, FP .8, TP .7 against 2 GT: F1 2/3 at .9, 2/4 at .8, 4/5 at .7
    assert per_class["building"]["class_score_thresh"] == pytest.approx(0.7) and per_class["building"]["f1"] == 0.8
    assert per_class["car"]["class_score_thresh"] is None


def test_all_point_envelope() -> None:
    # 3 GT; TP FP FP TP TP: precision 1, 1/2, 1/3, 1/2, 3/5 at recall 1/3, 1/3, 1/3, 2/3, 1.
    # Envelope (max to the right) at recall 2/3 is 3/5, not 1/2: AP = 1/3·1 + 1/3·3/5 + 1/3·3/5 = 11/15.
    flags = np.array([True, False, False, True, True])
    assert all_point_ap(flags, 3) == pytest.approx(11 / 15)
    assert all_point_ap(np.zeros(0, dtype=bool), 3) == 0.0


def test_detection_across_images_sorted_by_score() -> None:
    # Same TP, FP, TP sequence as the hand PR case but spread over 3 images and given out of score order.
    meter = DetectionMeter(["building"])
    _det(meter, [BOX_A], [0.7], [0], [BOX_A], [0])  # TP, lowest score
    _det(meter, [BOX_A], [0.8], [0], np.zeros((0, 4)), [])  # FP, no GT in this image
    _det(meter, [BOX_A], [0.9], [0], [BOX_A], [0])  # TP, highest score
    assert meter.compute()["map"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_detection_false_positive_of_absent_class() -> None:
    meter = DetectionMeter()
    _det(meter, [BOX_A, BOX_FAR], [0.9, 0.95], [0, 2], [BOX_A], [0])  # a car where there is no car in the GT
    m = meter.compute()
    assert m["per_class"]["car"]["ap"] is None and m["per_class"]["car"]["num_pred"] == 1
    assert m["per_class"]["tree"]["map"] is None
    assert m["map"] == 1.0  # mean over the classes with GT only (building)


def test_detection_duplicate_is_false_positive() -> None:
    # 2 GT; the duplicate of A (0.8) ranks between the two TPs. Counted as FP → 0.8333; as TP it would be 1.0.
    meter = DetectionMeter(["building"])
    _det(meter, [BOX_A, [0, 0, 10, 9.5], BOX_FAR], [0.9, 0.8, 0.7], [0, 0, 0], [BOX_A, BOX_FAR], [0, 0])
    assert meter.compute()["ap50"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_detection_empty_predictions_and_padding() -> None:
    meter = DetectionMeter()
    # GT padded as in the collated batch: label -1 rows are padding and are dropped.
    _det(meter, np.zeros((0, 4)), [], [], [BOX_A, [0, 0, 0, 0]], [1, -1])
    m = meter.compute()
    assert m["map"] == 0.0 and m["per_class"]["tree"]["num_gt"] == 1
    assert DetectionMeter().compute()["map"] is None  # no GT at all: undefined, not NaN


def test_detection_matching_rules() -> None:
    # GT A = [0,0,10,10], B = [4,0,14,10]. Detection 1 = A exactly (IoU with B 40/140 < 0.5) takes A.
    # Detection 2 = [1,0,12,10]: IoU with A 90/120 = 0.75 (taken), with B 80/130 ≈ 0.615 (free).
    # VOC: its best GT is A, already taken → FP → AP = 0.5. COCO: takes B → TP → AP = 1.
    args = ([BOX_A, [1, 0, 12, 10]], [0.9, 0.8], [0, 0], [BOX_A, [4, 0, 14, 10]], [0, 0])
    voc = DetectionMeter(["building"], iou_thresholds=[0.5])
    coco = DetectionMeter(["building"], iou_thresholds=[0.5], matching="coco")
    _det(voc, *args)
    _det(coco, *args)
    assert voc.compute()["map"] == pytest.approx(0.5)
    assert coco.compute()["map"] == pytest.approx(1.0)


def test_detection_bad_input() -> None:
    meter = DetectionMeter()
    with pytest.raises(InputError, match="pred_labels"):
        _det(meter, [BOX_A], [0.9], [3], [], [])
    with pytest.raises(InputError, match=r"\(N, 4\)"):
        meter.update(np.zeros((2, 3)), np.zeros(2), np.zeros(2), np.zeros((0, 4)), np.zeros(0))
    with pytest.raises(InputError, match="NaN"):
        _det(meter, [BOX_A], [float("nan")], [0], [], [])
    with pytest.raises(ConfigError, match="matching"):
        DetectionMeter(matching="11point")


# ---------------------------------------------------------------- merging, distributed, reports


def test_merge_and_sync_distributed(tmp_path) -> None:
    import torch.distributed as dist

    seg_a, seg_b = SegmentationMeter(3), SegmentationMeter(3)
    seg_a.update(np.array(PRED[:2]), np.array(TARGET[:2]))
    seg_b.update(np.array(PRED[2:]), np.array(TARGET[2:]))
    seg_a.merge(seg_b)
    assert seg_a.compute()["confusion"] == HAND_CONFUSION
    det_a, det_b = DetectionMeter(["building"]), DetectionMeter(["building"])
    _det(det_a, [BOX_A], [0.9], [0], [BOX_A], [0])
    _det(det_b, [BOX_FAR2, BOX_FAR], [0.8, 0.7], [0, 0], [BOX_FAR], [0])
    det_a.merge(det_b)
    assert det_a.compute()["map"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # One-process group: syncing must leave the totals unchanged (no double counting of the own shard).
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        seg_a.sync_distributed()
        det_a.sync_distributed()
    finally:
        dist.destroy_process_group()
    assert seg_a.compute()["confusion"] == HAND_CONFUSION
    assert det_a.compute()["map"] == pytest.approx(0.5 + 0.5 * 2 / 3) and det_a.num_images == 2


def test_report_json_and_table(tmp_path) -> None:
    seg = SegmentationMeter(4)
    seg.update(torch.tensor([[0, 0], [0, 3]]), torch.tensor([[0, 0], [0, 0]]))
    det = DetectionMeter()
    _det(det, [[2, 0, 12, 10]], [0.9], [0], [BOX_A], [0])
    metrics = {"segmentation": seg.compute(), "detection": det.compute(), "extra": np.float32("nan")}
    path = tmp_path / "sub" / "report.json"
    write_report(path, metrics)
    text = path.read_text()
    assert "NaN" not in text
    loaded = json.loads(text)
    assert loaded["extra"] is None and loaded["segmentation"]["iou"]["class_1"] is None
    assert loaded["detection"]["map"] == pytest.approx(0.4)
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temporary file left
    table = format_table(metrics)
    assert "[segmentation] segmentation: mIoU 0.3750" in table
    assert "mAP@[.5:.95] 0.4000  AP50 1.0000  AP75 0.0000" in table
    assert "n/a" in table  # undefined classes
