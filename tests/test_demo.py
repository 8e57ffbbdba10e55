"""The demo's own pieces: the side-by-side map and the fresh-tile summary a user reads."""

from __future__ import annotations

import numpy as np
import pytest

from engine.demo.__main__ import compose_map
from engine.demo.quality import TARGETS, format_quality, format_students, pick_map_model, student_summary


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


def _fresh_result(det_p, seg_v, det_v, seg_p, met=True):
    return {
        "headline": {},
        "met": {"vaihingen_seg_miou": met, "potsdam_building_ap50": True},
        "details": {
            "potsdam": {"det": {"ap50": det_p}, "seg": {"miou": seg_p}},
            "vaihingen": {"det": {"ap50": det_v}, "seg": {"miou": seg_v}},
        },
    }


def test_student_summary_splits_in_domain_from_cross_domain_by_direction():
    result = _fresh_result(det_p=0.6, seg_v=0.5, det_v=0.1, seg_p=None)
    p2v = student_summary(result, "potsdam", "vaihingen")
    assert p2v["in_domain"] == {"det_ap50": 0.6, "seg_miou": 0.5}
    assert p2v["cross_domain"] == {"det_ap50": 0.1, "seg_miou": None}
    assert p2v["score"] == pytest.approx((0.6 + 0.5 + 0.1 + 0.0) / 4)
    v2p = student_summary(result, "vaihingen", "potsdam")
    assert v2p["in_domain"] == {"det_ap50": 0.1, "seg_miou": None}
    assert v2p["cross_domain"] == {"det_ap50": 0.6, "seg_miou": 0.5}


def test_the_map_model_meets_the_targets_first_then_scores_best():
    plain = student_summary(_fresh_result(0.6, 0.6, 0.1, 0.1), "potsdam", "vaihingen")  # mean 0.35
    distilled = student_summary(_fresh_result(0.6, 0.6, 0.3, 0.3), "potsdam", "vaihingen")  # mean 0.45
    assert pick_map_model({"mtl": plain, "mtl_soft_pdf": distilled}) == "mtl_soft_pdf"
    short = student_summary(_fresh_result(0.9, 0.9, 0.9, 0.9, met=False), "potsdam", "vaihingen")
    assert pick_map_model({"mtl": plain, "mtl_soft_pdf": short}) == "mtl"
    text = format_students({"mtl": {**plain, "label": "Partial MTL"}, "mtl_soft_pdf": distilled}, "mtl_soft_pdf")
    assert "Partial MTL      in-domain det 0.600 seg 0.600 | cross-domain det 0.100 seg 0.100" in text
    assert text.splitlines()[-1].endswith("mean 0.450, targets met  <- map model")
