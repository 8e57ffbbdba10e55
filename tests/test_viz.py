"""Chip preview and prediction pictures: band choice, display scaling, overlays, boxes, files written atomically."""

from __future__ import annotations

import json

import numpy as np
import pytest
from chipfixtures import chip_objects, write_chip_dataset
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle
from PIL import Image

from engine.core.classes import DET_CLASSES, IGNORE_INDEX, PALETTE, SEG_CLASSES
from engine.core.errors import ConfigError, InputError
from engine.data.chipstore import open_chip_dataset
from engine.viz import plot_predictions, preview_chips
from engine.viz.chips import pick_chips, preview_figure
from engine.viz.predictions import predictions_figure
from engine.viz.render import det_colors_of, display_bands, draw_boxes, mask_rgba, seg_colors_of, to_display

MANIFEST = {
    "dataset": "vaihingen",
    "bands": ["nir", "red", "green"],
    "seg_classes": list(SEG_CLASSES),
    "palette": [list(c) for c in PALETTE],
    "det_classes": list(DET_CLASSES),
    "ignore_index": IGNORE_INDEX,
    "chip_size": 16,
    "gsd": 0.09,
    "value_scaling": {"dtype": "uint8", "max": 255.0},
}


def _png_size(path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        return image.size


def _box_rectangles(fig: Figure) -> list[Rectangle]:
    """Box outlines drawn on the panels (the axes background patches are not in ax.patches)."""
    return [p for ax in fig.axes for p in ax.patches if isinstance(p, Rectangle)]


@pytest.mark.parametrize(
    ("bands", "picked", "words"),
    [
        (["nir", "red", "green"], [0, 1, 2], "false colour"),
        (["green", "red", "nir"], [2, 1, 0], "false colour"),
        (["red", "green", "blue", "nir"], [0, 1, 2], "true colour"),
        (["B", "G", "R"], [2, 1, 0], "true colour"),
        (["swir"], [0, 0, 0], "swir"),
        (["b1", "b2", "b3", "b4", "b5"], [0, 1, 2], "b1, b2, b3"),
    ],
)
def test_display_bands_maps_known_band_sets(bands, picked, words):
    shown, text = display_bands(bands)
    assert shown == picked
    assert words in text


def test_to_display_scales_by_manifest_max_without_stretch():
    manifest = {**MANIFEST, "bands": ["red", "green", "blue"], "value_scaling": {"dtype": "uint16", "max": 4000.0}}
    image = np.array([[[1000, 2000, 4000], [0, 4000, 65535]]], dtype=np.uint16)  # (1, 2, 3)
    rgb = to_display([image], manifest, stretch=None)[0]
    np.testing.assert_allclose(rgb, [[[0.25, 0.5, 1.0], [0.0, 1.0, 1.0]]])  # above max clips to 1


def test_to_display_stretch_is_shared_by_bands_so_grey_stays_grey():
    rng = np.random.default_rng(0)
    grey = rng.integers(20, 60, (8, 8, 1), dtype=np.uint8).repeat(3, axis=2)
    rgb = to_display([grey], MANIFEST)[0]
    assert rgb.min() == pytest.approx(0.0, abs=0.05) and rgb.max() == pytest.approx(1.0, abs=0.05)  # dark → full range
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 1])
    np.testing.assert_array_equal(rgb[..., 1], rgb[..., 2])


def test_to_display_rejects_wrong_band_count():
    with pytest.raises(InputError, match=r"\(H, W, 3\)"):
        to_display([np.zeros((4, 4, 4), np.uint8)], MANIFEST)


def test_mask_rgba_colours_classes_and_clears_ignore():
    seg_colors = seg_colors_of(MANIFEST)
    mask = np.array([[1, IGNORE_INDEX], [4, 0]], np.uint8)
    rgba = mask_rgba(mask, seg_colors, IGNORE_INDEX, alpha=0.5)
    np.testing.assert_allclose(rgba[0, 0], [0, 0, 1, 0.5])  # building blue
    np.testing.assert_allclose(rgba[1, 0], [1, 1, 0, 0.5])  # car yellow
    assert rgba[0, 1, 3] == 0.0
    with pytest.raises(InputError, match=r"0\.\.5"):
        mask_rgba(np.array([[6]], np.uint8), seg_colors)


def test_det_colours_follow_the_segmentation_palette():
    np.testing.assert_allclose(det_colors_of(MANIFEST), np.array([PALETTE[1], PALETTE[3], PALETTE[4]]) / 255)


def test_det_colours_are_the_manifests_own_when_it_has_them():
    """User detection classes coloured in their class table are drawn in those colours (the manifest's
    ``det_colors``; older manifests ``det_palette``), not in those of the same-named segmentation class."""
    own = [[10, 20, 30], [40, 50, 60], [70, 80, 90]]
    for key in ("det_colors", "det_palette"):
        np.testing.assert_allclose(det_colors_of({**MANIFEST, key: own}), np.array(own) / 255)


def test_draw_boxes_places_pixel_edges_and_skips_padding():
    fig = Figure()
    ax = fig.add_subplot()
    ax.imshow(np.zeros((20, 20, 3)))
    colours = det_colors_of(MANIFEST)
    boxes = np.array([[2, 3, 7, 9], [0, 0, 1, 1], [10, 0, 20, 5]], np.float32)
    drawn = draw_boxes(ax, boxes, np.array([2, -1, 0]), DET_CLASSES, colours, scores=np.array([0.9, 0.1, 0.4]))
    assert drawn == 2
    first, second = _box_rectangles(fig)
    # a box [x0, x1) covers pixels x0..x1-1, whose outer edges are at x0 - 0.5 and x1 - 0.5 in imshow coordinates
    assert first.get_xy() == (1.5, 2.5) and (first.get_width(), first.get_height()) == (5, 6)
    np.testing.assert_allclose(first.get_edgecolor()[:3], colours[2])
    assert second.get_xy() == (9.5, -0.5)
    assert sorted(t.get_text() for t in ax.texts) == ["building 0.40", "car 0.90"]
    with pytest.raises(InputError, match="label 3"):
        draw_boxes(ax, boxes[:1], np.array([3]), DET_CLASSES, colours)


@pytest.fixture(scope="module")
def chips(tmp_path_factory):
    return write_chip_dataset(tmp_path_factory.mktemp("viz") / "chips", splits={"train": 6, "val": 2})


def test_preview_chips_writes_png_atomically(chips, tmp_path):
    out = tmp_path / "pictures" / "preview.png"
    assert preview_chips(chips, out, count=4) == out
    width, height = _png_size(out)
    assert 800 <= width <= 3000 and 500 <= height <= 3000
    assert sorted(p.name for p in out.parent.iterdir()) == ["preview.png"]  # no temp file left behind


def test_preview_figure_draws_the_picked_chips_and_their_boxes(chips):
    fig = preview_figure(chips, "train", count=4, seed=3)
    picks = pick_chips(6, 4, 3)
    assert len(picks) == 4
    # the fixture puts 3 boxes on even chips (with a car), 2 on odd ones
    assert len(_box_rectangles(fig)) == sum(len(chip_objects(i)) for i in picks)
    dataset = open_chip_dataset(chips)
    expected = to_display([np.asarray(dataset.images("train")[i]) for i in picks], dataset.manifest)
    shown = [ax.images[0].get_array() for ax in fig.axes if ax.images and len(ax.images) == 1]
    assert len(shown) == 4  # left panels: imagery only; right panels add the mask layer
    for got, want in zip(shown, expected):
        np.testing.assert_allclose(got, want)
    overlays = [ax.images[1] for ax in fig.axes if len(ax.images) == 2]
    assert len(overlays) == 4 and all(isinstance(o, AxesImage) for o in overlays)


def test_preview_of_a_chip_set_without_boxes(tmp_path):
    root = write_chip_dataset(
        tmp_path / "noboxes", splits={"train": 3}, dtype="uint16", max_value=4095, bands=("red", "green", "blue", "nir")
    )
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for chip in manifest["chips"]:
        chip["boxes"] = []
    manifest_path.write_text(json.dumps(manifest))
    assert len(_box_rectangles(preview_figure(root, count=12))) == 0
    assert _png_size(preview_chips(root, tmp_path / "p.png", count=12))[0] > 300


def test_preview_rejects_unknown_split_and_bad_count(chips, tmp_path):
    with pytest.raises(InputError, match="'test'"):
        preview_chips(chips, tmp_path / "p.png", split="test")
    with pytest.raises(ConfigError, match="count"):
        preview_chips(chips, tmp_path / "p.png", count=0)
    with pytest.raises(InputError, match=r"manifest\.json"):
        preview_chips(tmp_path / "missing", tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()


def _tiny_samples():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(2)]
    gt_masks = [np.full((16, 16), 2, np.uint8), np.full((16, 16), IGNORE_INDEX, np.uint8)]
    pred_masks = [np.full((16, 16), 1, np.uint8), None]
    gt_boxes = [np.array([[1, 1, 8, 8]], np.float32), np.array([[0, 0, 4, 4], [0, 0, 0, 0]], np.float32)]
    gt_labels = [np.array([0]), np.array([2, -1])]  # second GT row padded like a collated batch
    pred_boxes = [np.array([[1, 1, 8, 8], [2, 2, 9, 9], [3, 3, 5, 5]], np.float32), np.zeros((0, 4), np.float32)]
    pred_scores = [np.array([0.95, 0.5, 0.2]), np.zeros(0)]
    pred_labels = [np.array([0, 1, 2]), np.zeros(0, np.int64)]
    return images, gt_masks, pred_masks, gt_boxes, gt_labels, pred_boxes, pred_scores, pred_labels


def test_predictions_figure_rows_columns_and_score_filter():
    fig = predictions_figure(*_tiny_samples(), MANIFEST, score_min=0.3, titles=["a", "b"])
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 6  # 2 rows x (image | ground truth | prediction)
    gt_row0, pred_row0, gt_row1, pred_row1 = panels[1], panels[2], panels[4], panels[5]
    assert len(gt_row0.patches) == 1 and len(gt_row1.patches) == 1  # padding label -1 skipped
    assert len(pred_row0.patches) == 2  # the 0.2 detection is below score_min
    assert len(pred_row1.patches) == 0
    assert [len(ax.images) for ax in panels] == [1, 2, 2, 1, 2, 1]  # no predicted mask on row 2
    assert "2 boxes ≥ 0.30 (of 3)" in pred_row0.get_title()


def test_plot_predictions_writes_png_and_checks_lengths(tmp_path):
    samples = _tiny_samples()
    out = plot_predictions(tmp_path / "pred.png", *samples, MANIFEST, score_min=0.3)
    assert _png_size(out)[0] > 300
    assert [p.name for p in tmp_path.iterdir()] == ["pred.png"]
    with pytest.raises(InputError, match="'pred_scores' has 1 entries"):
        plot_predictions(tmp_path / "bad.png", *samples[:6], samples[6][:1], samples[7], MANIFEST)
    with pytest.raises(InputError, match="empty"):
        plot_predictions(tmp_path / "bad.png", [], None, None, None, None, None, None, None, MANIFEST)
    assert not (tmp_path / "bad.png").exists()
