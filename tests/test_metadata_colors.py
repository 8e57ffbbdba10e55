"""Class colours read from model metadata (``seg.colors`` / ``det.colors``) and their fallbacks."""

from __future__ import annotations

import pytest
from testmodels import tiny_contract

from engine.core.classes import DET_CLASSES, PALETTE, SEG_CLASSES
from engine.core.errors import InputError
from engine.core.modelio import HeadSpec, class_colors, model_info, to_props

OUTPUTS = {
    "seg_logits": {"task": "seg", "kind": "logits", "shape": ["batch", 3, 64, 64]},
    "det_scores": {"task": "det", "kind": "sigmoid_scores", "shape": ["batch", 10, 2]},
    "det_boxes": {"task": "det", "kind": "boxes_xyxy_px", "shape": ["batch", 10, 4]},
}
GRAPH = [(name, spec["shape"]) for name, spec in OUTPUTS.items()]


def _meta(seg_classes, det_classes, seg_colors=(), det_colors=()) -> dict:
    heads = {
        "seg": HeadSpec(tuple(seg_classes), tuple(map(tuple, seg_colors or class_colors(seg_classes)))),
        "det": HeadSpec(tuple(det_classes), tuple(map(tuple, det_colors or class_colors(det_classes)))),
    }
    return tiny_contract(heads, 64).to_metadata(OUTPUTS)


def _info(meta: dict):
    return model_info(to_props(meta), "m.onnx", "images", ["batch", 3, 64, 64], GRAPH)


def test_colors_come_from_the_metadata_keys():
    seg_colors, det_colors = [[0, 0, 200], [10, 200, 10], [90, 90, 90]], [[1, 2, 3], [4, 5, 6]]
    meta = _meta(["water", "field", "road"], ["boat", "tractor"], seg_colors, det_colors)
    assert meta["seg"]["colors"] == seg_colors and meta["det"]["colors"] == det_colors  # what export writes
    info = _info(meta)
    assert info.head("seg").colors == ((0, 0, 200), (10, 200, 10), (90, 90, 90))
    assert info.head("det").colors == ((1, 2, 3), (4, 5, 6))


def test_older_metadata_without_colors_falls_back_isprs_names_first():
    meta = _meta(["building", "solar panel", "Tree"], ["car", "boat", "pool"])
    for head in ("seg", "det"):
        meta[head].pop("colors", None)
    info = _info(meta)
    building, tree, car = (PALETTE[SEG_CLASSES.index(n)] for n in ("building", "tree", "car"))
    assert info.head("seg").colors[0] == building and info.head("seg").colors[2] == tree  # from seg.palette
    assert info.head("det").colors[0] == car
    assert info.head("seg").colors[1] not in PALETTE
    assert len(set(info.head("det").colors)) == 3 and len(set(info.head("seg").colors)) == 3


def test_fallback_colours_are_deterministic_and_distinct():
    assert class_colors(["a", "b", "c"]) == class_colors(["a", "b", "c"])
    assert len(set(class_colors([f"c{i}" for i in range(12)]))) == 12
    assert class_colors(list(DET_CLASSES)) == tuple(PALETTE[SEG_CLASSES.index(n)] for n in DET_CLASSES)


@pytest.mark.parametrize("bad", [[[1, 2, 3]], [[1, 2, 300], [0, 0, 0]], "red", [[1, 2], [3, 4]]])
def test_malformed_colors_are_one_line_errors(bad):
    meta = _meta(["a", "b"], ["car"])
    meta["seg"]["colors"] = bad
    with pytest.raises(InputError, match=r"seg.*colors"):
        _info(meta)
