"""Outputs styled when QGIS loads them, run after run, with the model's own classes and colours."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from qgis.core import QgsProject
from qgis_helpers import CapturingFeedback, ensure_provider, tiny_onnx_model, write_geotiff

pytestmark = pytest.mark.qgis


@pytest.fixture(scope="module")
def ortho(tmp_path_factory):
    folder = tmp_path_factory.mktemp("styling")
    rng = np.random.default_rng(0)
    return write_geotiff(folder / "ortho.tif", rng.integers(0, 255, (3, 48, 48), dtype=np.uint8))


def _run_and_load(model, ortho, out_dir, feedback):
    """As the Toolbox dialog does: a fresh context per run, then QGIS's own result handling loads the layers."""
    import processing

    params = {
        "INPUT": str(ortho),
        "MODEL": str(model),
        "OUTPUT_RASTER": str(out_dir / "classes.tif"),
        "OUTPUT_DETECTIONS": str(out_dir / "boxes.gpkg"),
    }
    processing.runAndLoadResults("pmtl:detect_segment", params, feedback=feedback)
    gc.collect()  # the run's context and algorithm are gone, as after a dialog run
    return {layer.source().split("|")[0]: layer for layer in QgsProject.instance().mapLayers().values()}


def test_two_toolbox_runs_in_one_process_are_both_styled(qgis_processing, tmp_path, ortho):
    ensure_provider()
    model = tiny_onnx_model(tmp_path / "m.onnx")
    project = QgsProject.instance()
    project.removeAllMapLayers()
    for run in ("first", "second"):
        out = tmp_path / run
        out.mkdir()
        feedback = CapturingFeedback()
        loaded = _run_and_load(model, ortho, out, feedback)
        assert not feedback.errors, feedback.errors
        raster = loaded[str(out / "classes.tif")]
        assert raster.renderer().type() == "paletted", run
        assert [c.label for c in raster.renderer().classes()][:2] == ["impervious", "building"]
        boxes = loaded[str(out / "boxes.gpkg")]
        assert boxes.renderer().type() == "categorizedSymbol" and boxes.labelsEnabled(), run
    project.removeAllMapLayers()


def test_styles_use_the_models_classes_and_colours(qgis_processing, tmp_path, ortho):
    ensure_provider()
    seg = ("water", "road", "roof")
    det = ("boat", "truck")
    seg_colors = [[0, 0, 200], [128, 128, 128], [200, 30, 30]]
    det_colors = [[250, 0, 250], [0, 250, 250]]
    model = tiny_onnx_model(tmp_path / "m.onnx", seg, det, seg_colors=seg_colors, det_colors=det_colors)
    project = QgsProject.instance()
    project.removeAllMapLayers()
    feedback = CapturingFeedback()
    loaded = _run_and_load(model, ortho, tmp_path, feedback)
    assert not feedback.errors, feedback.errors
    classes = loaded[str(tmp_path / "classes.tif")].renderer().classes()
    assert [c.label for c in classes] == list(seg)
    assert [list(c.color.getRgb()[:3]) for c in classes] == seg_colors
    categories = loaded[str(tmp_path / "boxes.gpkg")].renderer().categories()
    by_value = {c.value(): c.symbol().symbolLayer(c.symbol().symbolLayerCount() - 1) for c in categories}
    assert sorted(by_value) == sorted(det)
    assert [list(by_value[name].strokeColor().getRgb()[:3]) for name in det] == det_colors
    project.removeAllMapLayers()
