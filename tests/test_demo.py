"""The demo's own pieces: the side-by-side map and the fresh-tile summary a user reads."""

from __future__ import annotations

import numpy as np
import pytest

from engine.demo.__main__ import compose_map
from engine.demo.quality import TARGETS, format_quality


def _png(path, colour):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.imsave(path, np.full((40, 60, 3), colour, np.uint8))
    return path


def test_compose_map_puts_both_domains_side_by_side(tmp_path):
    import matplotlib.pyplot as plt

    panels = [("potsdam", _png(tmp_path / "p.png", 200)), ("vaihingen", _png(tmp_path / "v.png", 40))]
    out = compose_map(panels, tmp_path / "map.png", "p2v")
    image = plt.imread(out)
    assert image.shape[1] > 2 * image.shape[0] * 0.6  # wide: two panels
    left, right = image[image.shape[0] // 2, : image.shape[1] // 2], image[image.shape[0] // 2, image.shape[1] // 2 :]
    assert np.isclose(left[..., :3], 200 / 255, atol=0.02).all(axis=-1).any()
    assert np.isclose(right[..., :3], 40 / 255, atol=0.02).all(axis=-1).any()


def test_format_quality_names_each_target_and_whether_it_is_met():
    result = {
        "tiles_per_domain": 3,
        "headline": {
            "vaihingen_seg_miou": 0.6,
            "potsdam_building_ap50": 0.5,
            "potsdam_car_ap50": None,
            "potsdam_seg_miou": 0.1,
            "vaihingen_det_ap50": 0.2,
        },
        "targets": TARGETS,
        "met": {"vaihingen_seg_miou": True, "potsdam_building_ap50": False, "potsdam_car_ap50": False},
        "details": {"vaihingen": {"seg": {"iou": {"building": 0.7, "car": None}}}},
    }
    text = format_quality(result)
    assert "vaihingen_seg_miou       0.600  (target >= 0.55: met)" in text
    assert "potsdam_building_ap50    0.500  (target >= 0.60: NOT met)" in text
    assert "potsdam_car_ap50         n/a" in text
    assert "vaihingen IoU per class: building 0.70, car -" in text


@pytest.mark.parametrize("preset", ["demo", "cpu"])
def test_cpu_presets_work_at_the_working_gsd_with_the_lite_student(preset):
    from engine.experiments.__main__ import load_preset

    spec = load_preset(preset)
    assert spec["chips"]["gsd"] == pytest.approx(0.2)
    assert spec["models"]["student"] == {"demo": "models/student_map.yaml", "cpu": "models/student_lite.yaml"}[preset]
