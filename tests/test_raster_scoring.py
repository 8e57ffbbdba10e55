"""Whole-raster scoring (engine.evaluate.rasters): a known-answer model on rasters with hand-made labels."""

from __future__ import annotations

import numpy as np
import pytest

from engine.core.classes import SEG_CLASSES
from engine.evaluate.rasters import Scene, score_scenes
from tests.test_predict import models, scene, write_tif  # noqa: F401  (models is a fixture)

CAR, IMPERVIOUS = SEG_CLASSES.index("car"), SEG_CLASSES.index("impervious")


def _label(shape: tuple[int, int], cars: list[tuple[int, int]], size: int = 16) -> np.ndarray:
    label = np.full((1, *shape), IMPERVIOUS, np.uint8)
    for x, y in cars:
        label[0, y : y + size, x : x + size] = CAR
    return label


def test_perfect_scene_scores_one(models, tmp_path):  # noqa: F811
    cars = [(20, 20), (90, 60)]
    image = write_tif(tmp_path / "img.tif", scene(128, 160, cars))
    label = write_tif(tmp_path / "lab.tif", _label((128, 160), cars))
    result = score_scenes(models["blob"], [Scene(image, label)], work_dir=tmp_path)
    assert result["seg"]["iou"]["car"] == pytest.approx(1.0)
    assert result["seg"]["iou"]["impervious"] == pytest.approx(1.0)
    assert result["det"]["per_class"]["car"]["ap50"] == pytest.approx(1.0)
    assert result["det"]["per_class"]["car"]["num_gt"] == 2


def test_missed_car_halves_recall_and_car_iou(models, tmp_path):  # noqa: F811
    """The second labelled car is dark in the image: the model finds one of two cars (AP50 = 0.5) and labels half
    of the car pixels (IoU 256 / 512); the missed car's pixels count against impervious."""
    image = write_tif(tmp_path / "img.tif", scene(128, 160, [(20, 20)]))
    label = write_tif(tmp_path / "lab.tif", _label((128, 160), [(20, 20), (90, 60)]))
    ignore = _label((128, 160), [(20, 20), (90, 60)])
    ignore[0, :8, :] = 255  # an eroded label: ignored rows are not scored
    eroded = write_tif(tmp_path / "eroded.tif", ignore)
    result = score_scenes(models["blob"], [Scene(image, label, eroded)], work_dir=tmp_path)
    assert result["det"]["per_class"]["car"]["ap50"] == pytest.approx(0.5)
    assert result["seg"]["iou"]["car"] == pytest.approx(0.5)
    impervious = 128 * 160 - 2 * 256 - 8 * 160
    assert result["seg"]["iou"]["impervious"] == pytest.approx(impervious / (impervious + 256))
    assert result["seg"]["num_pixels"] == 128 * 160 - 8 * 160
