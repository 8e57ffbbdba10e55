"""Fixtures shared by the test modules. The small networks and model descriptions they use are in ``testmodels.py``
(importable by name, like ``chipfixtures`` and ``qgis_helpers``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from testmodels import ColourSegmenter, rgb_description

torch.set_num_threads(1)
# One thread for the whole session, whichever test files are collected: fixed-seed runs compared with recorded
# numbers (tests/test_train.py's golden runs) sum their reductions in another order on two threads.


class ColourModels:
    """Exported :class:`ColourSegmenter` ONNX models (64 px tiles, overlap 16), one file per (GSD, weight spread),
    each exported once per test session."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._made: dict[tuple[float, float | None], Path] = {}

    def __call__(self, gsd: float, weight_std: float | None = 3.0) -> Path:
        key = (gsd, weight_std)
        if key not in self._made:
            from engine.export import export_onnx

            path = self._folder / f"colour_{gsd:g}_{weight_std}.onnx"
            export_onnx(ColourSegmenter(weight_std).eval(), path, rgb_description(gsd), 64, overlap=16)
            self._made[key] = path
        return self._made[key]


@pytest.fixture(scope="session")
def colour_model(tmp_path_factory: pytest.TempPathFactory) -> ColourModels:
    """``colour_model(gsd, weight_std=3.0) -> Path``: a segmentation-only R-G-B model whose class follows the
    pixel colour."""
    return ColourModels(tmp_path_factory.mktemp("colour_models"))
