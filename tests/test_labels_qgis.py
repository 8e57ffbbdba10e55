"""QGIS side of your own labels: chip_own_labels with image layers + a polygon layer (memory, other CRS) + an AOI, and
render_map drawing a class map in the colours and names it carries."""

from __future__ import annotations

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import QgsFeature, QgsGeometry, QgsProcessingException, QgsRasterLayer, QgsVectorLayer
from qgis.PyQt.QtGui import QImage
from qgis_helpers import run_algorithm, write_geotiff

from engine.data.chipstore import open_chip_dataset
from engine.predict.outputs import style_class_map
from pmtl_qgis.styling import raster_classes

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
    layer = QgsRasterLayer(str(classes), "classes", "gdal")
    assert raster_classes(layer) == (["field", "orchard"], [(10, 200, 30), (120, 40, 160)])
    out = tmp_path / "map.png"
    params = {"INPUT": str(ortho), "CLASS_MAP": str(classes), "OPACITY": 1.0, "WIDTH": 200, "OUTPUT": str(out)}
    run_algorithm("pmtl:render_map", params)
    image = QImage(str(out))
    assert image.pixelColor(50, 50).getRgb()[:3] == (10, 200, 30)
    assert image.pixelColor(150, 50).getRgb()[:3] == (120, 40, 160)
    legend = {image.pixelColor(x, y).getRgb()[:3] for x in range(200) for y in range(100, image.height())}
    assert {(10, 200, 30), (120, 40, 160)} <= legend


def _memory_polygons() -> QgsVectorLayer:
    """Two labelled squares in WGS 84 (the image is in UTM 32N): a 'house' and a 'shed'."""
    layer = QgsVectorLayer("Polygon?crs=EPSG:4326&field=kind:string", "labels", "memory")
    features = []
    for kind, wkt in (
        ("house", "POLYGON((9.000 48.7486, 9.0003 48.7486, 9.0003 48.7488, 9.000 48.7488, 9.000 48.7486))"),
        ("shed", "POLYGON((9.0006 48.7483, 9.0008 48.7483, 9.0008 48.7485, 9.0006 48.7485, 9.0006 48.7483))"),
    ):
        feature = QgsFeature(layer.fields())
        feature.setAttribute("kind", kind)
        feature.setGeometry(QgsGeometry.fromWkt(wkt))
        features.append(feature)
    layer.dataProvider().addFeatures(features)
    return layer


def test_chip_own_labels_takes_image_layers_a_memory_polygon_layer_and_a_class_field(qgis_processing, tmp_path):
    # a 2-band image around the polygons (EPSG:4326 (9.0, 48.7488) is (500000, 5399531.7) in UTM 32N)
    image = write_geotiff(tmp_path / "ortho.tif", np.full((2, 96, 96), 90, np.uint8), gsd=1.0,
                          origin=(499990.0, 5399540.0))  # fmt: skip
    out = tmp_path / "chips"
    params = {"IMAGES": [str(image)], "POLYGONS": _memory_polygons(), "CLASS_FIELD": "kind", "TASK": 0,
              "SIZE": 32, "STRIDE": 32, "VAL_FRACTION": 0.0, "OUTPUT": str(out)}  # fmt: skip
    run_algorithm("pmtl:chip_own_labels", params)
    data = open_chip_dataset(out)
    assert data.det_classes == ["house", "shed"] and data.seg_classes == ["background", "house", "shed"]
    assert data.bands == ["band1", "band2"] and data.task == "both"
    boxes = [b for chip in data.manifest["chips"] for b in chip["boxes"]]
    assert {b[4] for b in boxes} == {"house", "shed"}
    masks = np.asarray(data.masks("train"))
    assert {1, 2} <= set(np.unique(masks).tolist())


def test_chip_own_labels_needs_exactly_one_label_layer(qgis_processing, tmp_path):
    image = write_geotiff(tmp_path / "ortho.tif", np.full((3, 64, 64), 90, np.uint8))
    params = {"IMAGES": [str(image)], "TASK": 1, "OUTPUT": str(tmp_path / "c")}
    neither = r"Give exactly one of 'Label polygons' or 'Class raster' \(found neither\)"
    with pytest.raises(QgsProcessingException, match=neither):
        run_algorithm("pmtl:chip_own_labels", params)
    with pytest.raises(QgsProcessingException, match=r"\(found both\)"):
        run_algorithm("pmtl:chip_own_labels", {**params, "POLYGONS": _memory_polygons(), "LABEL": str(image)})


def test_detections_gpkg_is_styled_in_the_colours_of_the_model_it_carries(qgis_processing, tmp_path):
    from osgeo import ogr

    from pmtl_qgis.styling import apply_detection_style

    path = tmp_path / "det.gpkg"
    dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = dataset.CreateLayer("detections", None, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("class", ogr.OFTString))
    layer.CreateField(ogr.FieldDefn("score", ogr.OFTReal))
    layer.SetMetadataItem("CLASS_NAMES", '["building", "pool"]')
    layer.SetMetadataItem("CLASS_COLORS", "[[230, 25, 75], [0, 130, 200]]")
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetField("class", "building")
    feature.SetGeometry(ogr.CreateGeometryFromWkt("POLYGON((0 0,1 0,1 1,0 1,0 0))"))
    layer.CreateFeature(feature)
    dataset = None
    boxes = QgsVectorLayer(str(path), "boxes", "ogr")
    apply_detection_style(boxes)
    colours = {}
    for category in boxes.renderer().categories():
        symbol = category.symbol()
        colours[category.value()] = symbol.symbolLayer(symbol.symbolLayerCount() - 1).strokeColor().getRgb()[:3]
    assert colours["building"] == (230, 25, 75)  # the model's colour, not the ISPRS blue of 'building'
    assert colours["pool"] == (0, 130, 200)
