"""pmtl:render_map: a PNG map rendered by QGIS — orthophoto, class map (the model's classes and colours, which
pmtl class maps carry; ISPRS for other rasters) and labelled boxes."""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsMapLayer,
    QgsMapRendererCustomPainterJob,
    QgsMapSettings,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorLayer,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QRect, QSize, Qt
from qgis.PyQt.QtGui import QColor, QImage, QPainter, QPen

from ..styling import BOX_COLOURS, Classes, apply_class_palette, apply_detection_style
from .base import PmtlAlgorithm, with_help

LEGEND_ROW_PX = 22


def class_map_classes(path: str) -> Classes | None:
    """Class names and colours a pmtl class map carries (``CLASS_NAMES`` + colour table); None for other rasters."""
    import json

    from osgeo import gdal

    dataset = gdal.OpenEx(path, gdal.OF_RASTER)
    band = dataset.GetRasterBand(1) if dataset is not None else None
    table = band.GetRasterColorTable() if band is not None else None
    text = band.GetMetadataItem("CLASS_NAMES") if band is not None else None
    if table is None or not text:
        return None
    try:
        names = [str(n) for n in json.loads(text)]
    except ValueError:
        return None
    colours = [tuple(table.GetColorEntry(i)[:3]) for i in range(min(len(names), table.GetCount()))]
    return (names, colours) if len(colours) == len(names) else None


def legend_entries(classes: Classes | None = None) -> list[tuple[str, tuple[int, int, int], bool]]:
    """(label, colour, is_box) for the class colours (default ISPRS) and then the box outline colours."""
    from engine.core.classes import PALETTE, SEG_CLASSES

    names, colours = classes or (SEG_CLASSES, PALETTE)
    entries = [(name.replace("_", " "), tuple(rgb), False) for name, rgb in zip(names, colours)]
    return entries + [(f"{name} box", rgb, True) for name, rgb in BOX_COLOURS.items()]


def draw_legend(painter: QPainter, top: int, width: int, classes: Classes | None = None) -> None:
    """One or more rows of swatches with labels under the map."""
    x, y = 8, top + 4
    for label, rgb, is_box in legend_entries(classes):
        text_width = painter.fontMetrics().horizontalAdvance(label)
        if x + 22 + text_width > width:
            x, y = 8, y + LEGEND_ROW_PX
        swatch = QRect(x, y + 3, 14, 14)
        if is_box:
            painter.setPen(QPen(QColor(*rgb), 2))
            painter.setBrush(Qt.NoBrush)
        else:
            painter.setPen(QPen(QColor(60, 60, 60), 1))
            painter.setBrush(QColor(*rgb))
        painter.drawRect(swatch)
        painter.setPen(QColor(0, 0, 0))
        painter.drawText(x + 20, y + 15, label)
        x += 20 + text_width + 16


def legend_height(width: int, classes: Classes | None = None) -> int:
    """Pixel height the legend needs at this image width (rough: entries of ~110 px)."""
    per_row = max(1, (width - 16) // 110)
    return LEGEND_ROW_PX * -(-len(legend_entries(classes)) // per_row) + 8


class RenderMap(PmtlAlgorithm):
    ALG_ID = "render_map"
    DISPLAY_NAME = "Render a result map (PNG)"
    GROUP_ID = "inference"
    GROUP_NAME = "Inference"
    HELP = (
        "Draws what 'Detect and segment' found the way QGIS shows it: the orthophoto, the class map on top with "
        "the model's class colours (half transparent), and the detected boxes outlined by class and labelled with "
        "their score, over the orthophoto's extent, into a PNG, with a legend underneath. Useful headless "
        "(qgis_process) for reports and demos.\n\n"
        "Example (qgis_process): qgis_process run pmtl:render_map -- INPUT=/data/ortho.tif "
        "CLASS_MAP=/out/classes.tif DETECTIONS=/out/detections.gpkg WIDTH=1600 OUTPUT=/out/map.png"
    )

    INPUT = "INPUT"
    CLASS_MAP = "CLASS_MAP"
    DETECTIONS = "DETECTIONS"
    OPACITY = "OPACITY"
    WIDTH = "WIDTH"
    LEGEND = "LEGEND"
    OUTPUT = "OUTPUT"

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        self.addParameter(
            with_help(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Orthophoto")), "Drawn at the bottom.")
        )
        self.addParameter(
            with_help(
                QgsProcessingParameterRasterLayer(self.CLASS_MAP, self.tr("Class map"), optional=True),
                "The class raster of 'Detect and segment', drawn with the ISPRS palette.",
            )
        )
        self.addParameter(
            with_help(
                QgsProcessingParameterVectorLayer(self.DETECTIONS, self.tr("Detections"), optional=True),
                "The detections layer (fields class and score), drawn on top.",
            )
        )
        number = QgsProcessingParameterNumber
        self.addParameter(
            with_help(
                number(self.OPACITY, self.tr("Class map opacity"), number.Double, 0.45, False, 0.0, 1.0),
                "0: invisible, 1: opaque.",
            )
        )
        self.addParameter(
            with_help(
                number(self.WIDTH, self.tr("Image width (px)"), number.Integer, 1200, False, 64, 20000),
                "The height follows the orthophoto's aspect ratio.",
            )
        )
        self.addParameter(
            with_help(
                QgsProcessingParameterBoolean(self.LEGEND, self.tr("Add a legend"), True),
                "Class colours and box colours under the map.",
            )
        )
        self.addParameter(
            with_help(
                QgsProcessingParameterFileDestination(self.OUTPUT, self.tr("Map image"), fileFilter="PNG (*.png)"),
                "PNG file.",
            )
        )

    def processAlgorithm(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        # New layers from the sources: never restyle the user's layers, and safe in a worker thread.
        ortho_in = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        ortho = QgsRasterLayer(ortho_in.source(), "ortho", ortho_in.providerType())
        layers: list[QgsMapLayer] = [ortho]
        classes_in = self.parameterAsRasterLayer(parameters, self.CLASS_MAP, context)
        class_table = None
        if classes_in is not None:
            class_table = class_map_classes(classes_in.source())  # the model's own classes, else ISPRS
            classes = QgsRasterLayer(classes_in.source(), "classes", classes_in.providerType())
            apply_class_palette(classes, class_table)
            classes.renderer().setOpacity(self.parameterAsDouble(parameters, self.OPACITY, context))
            layers.insert(0, classes)
        boxes_in = self.parameterAsVectorLayer(parameters, self.DETECTIONS, context)
        if boxes_in is not None:
            boxes = QgsVectorLayer(boxes_in.source(), "detections", boxes_in.providerType())
            apply_detection_style(boxes)
            layers.insert(0, boxes)
        if not all(layer.isValid() for layer in layers):
            bad = [layer.name() for layer in layers if not layer.isValid()]
            raise QgsProcessingException(f"Could not open the layer(s) {', '.join(bad)} for rendering.")
        extent = ortho.extent()
        width = self.parameterAsInt(parameters, self.WIDTH, context)
        height = max(1, round(width * extent.height() / extent.width()))
        settings = QgsMapSettings()
        settings.setLayers(layers)
        settings.setDestinationCrs(ortho.crs())
        settings.setOutputSize(QSize(width, height))
        settings.setExtent(extent)
        settings.setBackgroundColor(QColor(255, 255, 255))
        settings.setFlag(QgsMapSettings.Antialiasing, True)
        settings.setTransformContext(context.transformContext())
        extra = legend_height(width, class_table) if self.parameterAsBool(parameters, self.LEGEND, context) else 0
        image = QImage(QSize(width, height + extra), QImage.Format_ARGB32_Premultiplied)
        image.fill(QColor(255, 255, 255))
        painter = QPainter(image)
        job = QgsMapRendererCustomPainterJob(settings, painter)
        job.renderSynchronously()
        if extra:
            draw_legend(painter, height, width, class_table)
        painter.end()
        out_path = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        if not image.save(out_path, "PNG"):
            raise QgsProcessingException(f"Map image: could not write {out_path}.")
        feedback.pushInfo(f"Rendered {width}×{height} px: {out_path}")
        return {self.OUTPUT: out_path}
