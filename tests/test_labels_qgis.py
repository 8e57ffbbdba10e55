"""QGIS side of user classes: render_map draws a class map in the colours and names it carries."""

from __future__ import annotations

import numpy as np
import pytest
from osgeo import gdal
from qgis.PyQt.QtGui import QImage
from qgis_helpers import run_algorithm, write_geotiff

from engine.predict.outputs import style_class_map
from pmtl_qgis.algorithms.render_map import class_map_classes

pytestmark = pytest.mark.qgis

gdal.UseExceptions()


def test_render_map_uses_the_class_maps_own_classes_and_colours(qgis_processing, tmp_path):
    ortho = write_geotiff(tmp_path / "ortho.tif", np.full((3, 100, 200), 128, np.uint8), gsd=1.0)
    ids = np.zeros((1, 100, 200), np.uint8)
    ids[:, :, 100:] = 1
    classes = write_geotiff(tmp_path / "classes.tif", ids, gsd=1.0)
    dataset = gdal.Open(str(classes), gdal.GA_Update)
    style_class_map(dataset.GetRasterBand(1), ["field", "orchard"], [(10, 200, 30), (120, 40, 160)])
    dataset = None
    assert class_map_classes(str(classes)) == (["field", "orchard"], [(10, 200, 30), (120, 40, 160)])
    assert class_map_classes(str(ortho)) is None
    out = tmp_path / "map.png"
    params = {"INPUT": str(ortho), "CLASS_MAP": str(classes), "OPACITY": 1.0, "WIDTH": 200, "OUTPUT": str(out)}
    run_algorithm("pmtl:render_map", params)
    image = QImage(str(out))
    assert image.pixelColor(50, 50).getRgb()[:3] == (10, 200, 30)
    assert image.pixelColor(150, 50).getRgb()[:3] == (120, 40, 160)
    legend = {image.pixelColor(x, y).getRgb()[:3] for x in range(200) for y in range(100, image.height())}
    assert {(10, 200, 30), (120, 40, 160)} <= legend
