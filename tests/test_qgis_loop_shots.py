"""The correct-and-retrain screenshots (scripts/qgis_loop_shots.py) edit the Detections layer as a user would: the
edits it plans from the synthetic tile's ground truth, on boxes whose overlaps are computed by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from qgis_loop_shots import iou, plan_edits  # noqa: E402

sys.path.remove(str(REPO / "scripts"))

TRUTH = [
    {"class": "building", "box": [0.0, 0.0, 10.0, 10.0]},
    {"class": "car", "box": [20.0, 0.0, 22.0, 4.0]},
    {"class": "building", "box": [40.0, 40.0, 50.0, 46.0]},  # no box on it: the missed one (60 m²)
    {"class": "tree", "box": [60.0, 60.0, 61.0, 61.0]},  # missed too, but a tree of 1 m²: a building comes first
]


def test_iou_of_boxes_computed_by_hand():
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert iou([0, 0, 10, 10], [20, 0, 22, 4]) == 0.0
    assert iou([0, 0, 2, 2], [0, 0, 2, 2]) == 1.0


def test_the_planned_edits_delete_the_false_box_draw_the_missed_object_and_fix_a_class():
    detections = [
        {"id": 1, "class": "building", "score": 0.9, "box": [0.0, 0.0, 10.0, 9.0]},  # right (IoU 0.9)
        {"id": 2, "class": "building", "score": 0.6, "box": [20.0, 0.0, 22.0, 4.0]},  # on the car: wrong class
        {"id": 3, "class": "tree", "score": 0.5, "box": [80.0, 80.0, 90.0, 90.0]},  # on nothing: false
        {"id": 4, "class": "car", "score": 0.4, "box": [0.0, 0.0, 10.0, 10.0]},  # on a building: a class to fix too
    ]
    edits = plan_edits(detections, TRUTH)
    assert edits["delete"] == 3  # the one box on no object, though 4 scores lower (4 lies on a building)
    assert edits["draw"] == TRUTH[2]
    assert edits["reclass"] == (2, "car")


def test_without_a_false_box_the_lowest_score_goes_and_nothing_missed_is_drawn():
    detections = [
        {"id": 7, "class": "building", "score": 0.8, "box": [0.0, 0.0, 10.0, 10.0]},
        {"id": 8, "class": "car", "score": 0.3, "box": [20.0, 0.0, 22.0, 4.0]},
    ]
    edits = plan_edits(detections, TRUTH[:2])
    assert edits == {"delete": 8, "draw": None, "reclass": None}
