"""The model contract (engine.core.modelio): one description of a trained model, written to checkpoints and ONNX
metadata and read back the same; checkpoints and models written before it keep their meaning."""

from __future__ import annotations

import pytest
from testmodels import tiny_contract

from engine.core.classes import DET_CLASSES, ISPRS_DET_PALETTE, PALETTE, SEG_CLASSES
from engine.core.errors import ConfigError, InputError
from engine.core.modelio import (
    DEFAULT_SCORE_THRESH,
    Decoding,
    HeadSpec,
    ModelContract,
    heads_from_checkpoint,
    heads_to_checkpoint,
    model_info,
    to_props,
)

OUTPUTS = {
    "seg_logits": {"task": "seg", "kind": "logits", "shape": ["batch", 2, 32, 32]},
    "det_scores": {"task": "det", "kind": "sigmoid_scores", "shape": ["batch", 5, 2]},
    "det_boxes": {"task": "det", "kind": "boxes_xyxy_px", "shape": ["batch", 5, 4]},
}
HEADS = {
    "seg": HeadSpec(("field", "road"), ((10, 200, 10), (90, 90, 90))),
    "det": HeadSpec(("house", "shed"), ((200, 0, 0), (0, 0, 200)), (0.25, 0.75)),
}


INPUT = {
    "bands": ("nir", "red", "green"),
    "value_scaling": {"dtype": "uint16", "max": 4095},
    "mean": (0.1, 0.2, 0.3),
    "std": (0.5, 0.5, 0.5),
    "gsd": 0.3,
}


def _contract() -> ModelContract:
    return tiny_contract(HEADS, 32, **INPUT)


def _read(meta: dict):
    graph = [(name, spec["shape"]) for name, spec in meta["outputs"].items()]
    return model_info(to_props(meta), "m.onnx", "images", ["batch", 3, 32, 32], graph)


def test_checkpoint_keys_round_trip_under_one_name_each():
    keys = heads_to_checkpoint(HEADS)
    assert keys == {
        "seg_classes": ["field", "road"],
        "seg_colors": [[10, 200, 10], [90, 90, 90]],
        "det_classes": ["house", "shed"],
        "det_colors": [[200, 0, 0], [0, 0, 200]],
        "class_score_thresh": {"house": 0.25, "shed": 0.75},
    }
    assert heads_from_checkpoint(keys, {"seg": 2, "det": 2}) == HEADS


def test_older_checkpoint_keys_are_still_read():
    old = {
        "seg_classes": ["field", "road"],
        "palette": [[10, 200, 10], [90, 90, 90]],
        "det_classes": ["house", "shed"],
        "det_palette": [[200, 0, 0], [0, 0, 200]],
        "det_score_thresholds": {"house": 0.25, "shed": None},  # None: no threshold reached any detection
    }
    heads = heads_from_checkpoint(old, {"seg": 2, "det": 2})
    assert heads["seg"] == HEADS["seg"]
    assert heads["det"] == HeadSpec(("house", "shed"), HEADS["det"].colors, (0.25, DEFAULT_SCORE_THRESH))


def test_checkpoint_without_classes_gets_the_isprs_heads_and_a_wrong_count_is_refused():
    heads = heads_from_checkpoint({}, {"seg": 6, "det": 3})
    assert heads["seg"] == HeadSpec(SEG_CLASSES, PALETTE)
    assert heads["det"] == HeadSpec(DET_CLASSES, ISPRS_DET_PALETTE)
    with pytest.raises(InputError, match=r"export: metadata 'seg_classes' has 6 entries, the model head has 2"):
        heads_from_checkpoint({}, {"seg": 2}, "export")


def test_onnx_metadata_round_trip_keeps_every_head_and_the_deepness_keys():
    meta = _contract().to_metadata(OUTPUTS, Decoding(score_thresh=0.4))
    assert meta["det"]["class_score_thresh"] == [0.25, 0.75] and meta["det"]["colors"] == [[200, 0, 0], [0, 0, 200]]
    assert meta["seg"]["colors"] == meta["seg"]["palette"] == [[10, 200, 10], [90, 90, 90]]  # palette: schema v1
    assert meta["class_names"] == {"0": "field", "1": "road"} and meta["det_conf"] == 0.4
    assert meta["standardization_mean"] == pytest.approx([0.1 * 4095 / 255, 0.2 * 4095 / 255, 0.3 * 4095 / 255])
    info = _read(meta)
    assert info.heads == HEADS
    assert info.score_thresh == 0.4 and info.head("det").class_score_thresh == (0.25, 0.75)
    assert info.head("seg").classes == ("field", "road") and info.head("det").colors == ((200, 0, 0), (0, 0, 200))


def test_metadata_written_before_the_contract_reads_the_same():
    """A model exported by the previous version: ``seg.palette`` only, no ``colors``, no class thresholds."""
    meta = _contract().to_metadata(OUTPUTS)
    for head in ("seg", "det"):
        del meta[head]["colors"]
    del meta["det"]["class_score_thresh"]
    info = _read(meta)
    assert info.head("seg").colors == HEADS["seg"].colors  # from seg.palette
    assert info.head("det").classes == ("house", "shed") and len(set(info.head("det").colors)) == 2  # fallback colours
    assert info.head("det").class_score_thresh is None and info.score_thresh == DEFAULT_SCORE_THRESH


def test_a_threshold_list_of_the_wrong_length_is_a_one_line_error():
    meta = _contract().to_metadata(OUTPUTS)
    meta["det"]["class_score_thresh"] = [0.5]
    with pytest.raises(InputError, match=r"m.onnx.*'det.class_score_thresh' lists 1 thresholds for 2 classes"):
        _read(meta)


def test_a_head_spec_must_have_one_colour_and_threshold_per_class():
    with pytest.raises(ConfigError, match="1 colours for 2 classes"):
        HeadSpec(("a", "b"), ((1, 2, 3),))
    with pytest.raises(ConfigError, match="1 class score thresholds for 2 classes"):
        HeadSpec(("a", "b"), ((1, 2, 3), (4, 5, 6)), (0.5,))


def test_contract_from_an_older_checkpoint_writes_onnx_metadata_under_the_new_names():
    old = {
        **INPUT,
        "domains": [{"task": "det", "gsd": 0.3, "value_scaling": INPUT["value_scaling"]}],
        "seg_classes": ["field", "road"],
        "palette": [[10, 200, 10], [90, 90, 90]],
        "det_classes": ["house", "shed"],
        "det_palette": [[200, 0, 0], [0, 0, 200]],
        "det_score_thresholds": {"house": 0.25, "shed": 0.75},
    }
    contract = ModelContract.from_checkpoint(old, {"seg": 2, "det": 2}, 32, 8, {"name": "old"})
    assert contract.tasks == ("det", "seg") and contract.heads == HEADS
    info = _read(contract.to_metadata(OUTPUTS))
    assert info.heads == HEADS and info.gsd_range == (0.3, 0.3) and info.raw["provenance"]["name"] == "old"
