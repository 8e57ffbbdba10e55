"""pmtl:render_map: a PNG map rendered by QGIS — orthophoto, class map in its class colours and labelled boxes."""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsMapLayer,
    QgsMapRendererCustomPainterJob,
    QgsMapSettings,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QRect, QSize, Qt
from qgis.PyQt.QtGui import QColor, QImage, QPainter, QPen

from ..styling import apply_class_palette, apply_detection_style
from .base import PmtlAlgorithm
from .params import Spec, spec

LEGEND_ROW_PX = 22


Legend = list[tuple[str, tuple[int, int, int], bool]]
"""(label, colour, is_box) rows of the legend."""


def legend_entries(classes: QgsRasterLayer | None, boxes: QgsVectorLayer | None) -> Legend:
    """The class colours of the styled class map, then the box outline colour of each detected class."""
    entries: Legend = []
    if classes is not None:
        for entry in classes.renderer().classes():
            entries.append((entry.label.replace("_", " "), entry.color.getRgb()[:3], False))
    if boxes is not None:
        for category in boxes.renderer().categories():
            outline = category.symbol().symbolLayer(category.symbol().symbolLayerCount() - 1)
            entries.append((f"{category.label()} box", outline.strokeColor().getRgb()[:3], True))
    return entries


def draw_legend(painter: QPainter, entries: Legend, top: int, width: int) -> None:
    """One or more rows of swatches with labels under the map."""
    x, y = 8, top + 4
    for label, rgb, is_box in entries:
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


def legend_height(entries: Legend, width: int) -> int:
    """Pixel height the legend needs at this image width (rough: entries of ~110 px)."""
    per_row = max(1, (width - 16) // 110)
    return LEGEND_ROW_PX * -(-len(entries) // per_row) + 8


class RenderMap(PmtlAlgorithm):
    ALG_ID = "render_map"
    DISPLAY_NAME = "Render a result map (PNG)"
    GROUP_ID = "inference"
    HELP = (
        "Draws what 'Detect and segment' found the way QGIS shows it: the orthophoto, the class map on top with "
        "its class colours (half transparent), and the detected boxes outlined by class and labelled with their score,"
        " over the orthophoto's extent, into a PNG, with a legend underneath. Useful headless (qgis_process) "
        "for reports and demos.\n\n"
        "Example (qgis_process): qgis_process run pmtl:render_map -- INPUT=/data/ortho.tif "
        "CLASS_MAP=/out/classes.tif DETECTIONS=/out/detections.gpkg WIDTH=1600 OUTPUT=/out/map.png"
    )

    def parameters(self) -> list[Spec]:
        class_map = "The class raster of 'Detect and segment', drawn with its class colours."
        detections = "The detections layer (fields class and score), drawn on top."
        width = "The height follows the orthophoto's aspect ratio."
        return [
            spec("raster", "INPUT", "Orthophoto", "Drawn at the bottom."),
            spec("raster", "CLASS_MAP", "Class map", class_map, optional=True),
            spec("vector", "DETECTIONS", "Detections", detections, optional=True),
            spec(
                "double",
                "OPACITY",
                "Class map opacity",
                "0: invisible, 1: opaque.",
                defaultValue=0.45,
                minValue=0.0,
                maxValue=1.0,
            ),
            spec("integer", "WIDTH", "Image width (px)", width, defaultValue=1200, minValue=64, maxValue=20000),
            spec(
                "boolean",
                "LEGEND",
                "Add a legend",
                "Class colours and box colours under the map.",
                defaultValue=True,
            ),
            spec("file_out", "OUTPUT", "Map image", "PNG file.", fileFilter="PNG (*.png)"),
        ]

    def process(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        # New layers from the sources: never restyle the user's layers, and safe in a worker thread.
        ortho_in = self.parameterAsRasterLayer(parameters, "INPUT", context)
        ortho = QgsRasterLayer(ortho_in.source(), "ortho", ortho_in.providerType())
        layers: list[QgsMapLayer] = [ortho]
        classes, boxes = None, None
        classes_in = self.parameterAsRasterLayer(parameters, "CLASS_MAP", context)
        if classes_in is not None:
            classes = QgsRasterLayer(classes_in.source(), "classes", classes_in.providerType())
            layers.insert(0, classes)
        boxes_in = self.parameterAsVectorLayer(parameters, "DETECTIONS", context)
        if boxes_in is not None:
            boxes = QgsVectorLayer(boxes_in.source(), "detections", boxes_in.providerType())
            layers.insert(0, boxes)
        if not all(layer.isValid() for layer in layers):
            bad = [layer.name() for layer in layers if not layer.isValid()]
            raise QgsProcessingException(f"Could not open the layer(s) {', '.join(bad)} for rendering.")
        if classes is not None:
            apply_class_palette(classes)
            classes.renderer().setOpacity(self.parameterAsDouble(parameters, "OPACITY", context))
        if boxes is not None:
            apply_detection_style(boxes)
        extent = ortho.extent()
        width = self.parameterAsInt(parameters, "WIDTH", context)
        height = max(1, round(width * extent.height() / extent.width()))
        settings = QgsMapSettings()
        settings.setLayers(layers)
        settings.setDestinationCrs(ortho.crs())
        settings.setOutputSize(QSize(width, height))
        settings.setExtent(extent)
        settings.setBackgroundColor(QColor(255, 255, 255))
        settings.setFlag(QgsMapSettings.Antialiasing, True)
        settings.setTransformContext(context.transformContext())
        entries = legend_entries(classes, boxes)
        legend = self.parameterAsBool(parameters, "LEGEND", context) and bool(entries)
        extra = legend_height(entries, width) if legend else 0
        image = QImage(QSize(width, height + extra), QImage.Format_ARGB32_Premultiplied)
        image.fill(QColor(255, 255, 255))
        painter = QPainter(image)
        job = QgsMapRendererCustomPainterJob(settings, painter)
        job.renderSynchronously()
        if extra:
            draw_legend(painter, entries, height, width)
        painter.end()
        out_path = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        if not image.save(out_path, "PNG"):
            raise QgsProcessingException(f"Map image: could not write {out_path}.")
        feedback.pushInfo(f"Rendered {width}×{height} px: {out_path}")
        return {"OUTPUT": out_path}
