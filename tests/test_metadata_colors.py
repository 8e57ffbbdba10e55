"""Class colours read from model metadata (``seg.colors`` / ``det.colors``) and their fallbacks."""

from __future__ import annotations

import json

import pytest

from engine.core.classes import DET_CLASSES, PALETTE, SEG_CLASSES
from engine.core.errors import InputError
from engine.export.metadata import build_metadata, class_colors, model_info, to_props

OUTPUTS = {
    "seg_logits": {"task": "seg", "kind": "logits", "shape": ["batch", 3, 64, 64]},
    "det_scores": {"task": "det", "kind": "sigmoid_scores", "shape": ["batch", 10, 2]},
    "det_boxes": {"task": "det", "kind": "boxes_xyxy_px", "shape": ["batch", 10, 4]},
}
GRAPH = [(name, spec["shape"]) for name, spec in OUTPUTS.items()]


def _props(seg_classes, det_classes, palette=(), **extra) -> dict[str, str]:
    meta = build_metadata(
        tasks=["seg", "det"],
        bands=["r", "g", "b"],
        value_scaling={"dtype": "uint8", "max": 255},
        mean=[0, 0, 0],
        std=[1, 1, 1],
        gsd=0.1,
        tile_size=64,
        overlap=8,
        outputs=OUTPUTS,
        seg_classes=seg_classes,
        palette=palette,
        det_classes=det_classes,
    )
    props = to_props(meta)
    props.update({key: json.dumps(value) for key, value in extra.items()})
    return props


def _info(props):
    return model_info(props, "m.onnx", "images", ["batch", 3, 64, 64], GRAPH)


def test_colors_come_from_the_metadata_keys():
    props = _props(
        ["water", "field", "road"],
        ["boat", "tractor"],
        **{
            "seg.colors": [[0, 0, 200], [10, 200, 10], [90, 90, 90]],
            "det.colors": [[1, 2, 3], [4, 5, 6]],
        },
    )
    info = _info(props)
    assert info.seg_colors == ((0, 0, 200), (10, 200, 10), (90, 90, 90))
    assert info.det_colors == ((1, 2, 3), (4, 5, 6))


def test_without_color_keys_isprs_names_get_isprs_colours_and_others_distinct_ones():
    info = _info(_props(["building", "solar panel", "Tree"], ["car", "boat", "pool"]))
    building, tree, car = (PALETTE[SEG_CLASSES.index(n)] for n in ("building", "tree", "car"))
    assert info.seg_colors[0] == building and info.seg_colors[2] == tree
    assert info.det_colors[0] == car
    assert info.seg_colors[1] not in PALETTE
    assert len(set(info.det_colors)) == 3 and len(set(info.seg_colors)) == 3
    # Deterministic: the same names give the same colours.
    assert class_colors(["a", "b", "c"]) == class_colors(["a", "b", "c"])
    assert len(set(class_colors([f"c{i}" for i in range(12)]))) == 12


def test_the_seg_palette_is_used_when_it_covers_every_class():
    palette = [[9, 9, 9], [8, 8, 8]]
    info = _info(_props(["a", "b"], list(DET_CLASSES), palette=palette))
    assert info.seg_colors == ((9, 9, 9), (8, 8, 8))


@pytest.mark.parametrize("bad", [[[1, 2, 3]], [[1, 2, 300], [0, 0, 0]], "red", [[1, 2], [3, 4]]])
def test_malformed_color_keys_are_one_line_errors(bad):
    with pytest.raises(InputError, match=r"'seg\.colors'.*2 classes"):
        _info(_props(["a", "b"], ["car"], **{"seg.colors": bad}))
