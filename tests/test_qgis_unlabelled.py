"""Train's 'Unlabelled imagery' input: chip folders pass through, rasters are chipped (task none) at the training
chip size into the run folder and reused on resume, and the engine gets them as ``data.unlabelled``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from qgis.core import QgsProcessingContext, QgsProcessingException, QgsProject
from qgis_helpers import CapturingFeedback, ensure_provider, run_algorithm, write_geotiff

from engine.train.config import unlabelled_roots
from pmtl_qgis.algorithms.train import Train, chip_size_of, yaml_path
from pmtl_qgis.scope import engine_scope

pytestmark = pytest.mark.qgis


def _train() -> Train:
    ensure_provider()
    alg = Train()
    alg.initAlgorithm()
    return alg


def _labelled(folder: Path, size: int) -> Path:
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"chip_size": size, "complete": True}))
    return folder


def test_rasters_are_chipped_into_the_run_folder_and_folders_pass_through(qgis_processing, tmp_path):
    rng = np.random.default_rng(0)
    raster = write_geotiff(tmp_path / "unlabelled ortho.tif", rng.integers(0, 255, (3, 64, 96), dtype=np.uint8))
    chips = _labelled(tmp_path / "seg chips", 32)
    ready = _labelled(tmp_path / "ready", 32)
    out = tmp_path / "run"
    params = {"SEG_DATA": str(chips), "UNLABELLED": [str(raster), str(ready)], "OUTPUT": str(out)}
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    with_engine = _train()
    with engine_scope():
        roots = with_engine.unlabelled_roots(params, context, out, CapturingFeedback())
    assert roots == [(out / "unlabelled" / "unlabelled ortho").resolve(), ready.resolve()]
    manifest = json.loads((roots[0] / "manifest.json").read_text())
    assert manifest["complete"] and manifest["chip_size"] == 32
    assert manifest["splits"] == {"train": 6}  # 64 × 96 px in 32 px chips, nothing held out
    feedback = CapturingFeedback()
    with engine_scope():
        with_engine.unlabelled_roots(params, context, out, feedback)  # a resumed run reuses them
    assert any("reusing the chips" in line for line in feedback.infos)
    value = yaml.safe_load(json.dumps([str(r) for r in roots]))  # the override Train passes, as the engine parses it
    assert unlabelled_roots({"data": {"unlabelled": value}}) == [str(r) for r in roots]


def test_unlabelled_imagery_needs_distillation_and_real_inputs(qgis_processing, tmp_path):
    chips = _labelled(tmp_path / "chips", 32)
    feedback = CapturingFeedback()
    params = {"SEG_DATA": str(chips), "KD": 1, "UNLABELLED": [str(chips)], "OUTPUT": str(tmp_path / "r")}
    with pytest.raises(QgsProcessingException):
        run_algorithm("pmtl:train", params, feedback)
    expected = (
        "'Unlabelled imagery (distillation only)' (config key data.unlabelled): unlabelled imagery is trained by "
        "distillation only; turn on kd.soft and/or kd.feature (with 'Detection teacher checkpoint' and "
        "'Segmentation teacher checkpoint')"
    )
    assert any(expected in e for e in feedback.errors)
    context = QgsProcessingContext()
    with pytest.raises(QgsProcessingException, match="neither a chip dataset folder"):
        _train().unlabelled_roots({"UNLABELLED": [str(tmp_path / "missing.tif")]}, context, tmp_path, feedback)


def test_paths_survive_the_engines_yaml_parsing():
    for path in (r"C:\Users\me\my chips", "/data/run #2: final"):
        assert yaml.safe_load(yaml_path(path)) == path
    assert chip_size_of([Path("/nonexistent")]) == 320
