"""pmtl:render_map: a PNG map rendered by QGIS — orthophoto, class map (ISPRS palette) and labelled boxes."""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsMapLayer,
    QgsMapRendererCustomPainterJob,
    QgsMapSettings,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorLayer,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor, QImage, QPainter

from ..styling import apply_class_palette, apply_detection_style
from .base import PmtlAlgorithm, with_help


class RenderMap(PmtlAlgorithm):
    ALG_ID = "render_map"
    DISPLAY_NAME = "Render a result map (PNG)"
    GROUP_ID = "inference"
    GROUP_NAME = "Inference"
    HELP = (
        "Draws what 'Detect and segment' found the way QGIS shows it: the orthophoto, the class map on top with "
        "the ISPRS colours (half transparent), and the detected boxes outlined by class and labelled with their "
        "score, over the orthophoto's extent, into a PNG. Useful headless (qgis_process) for reports and demos.\n\n"
        "Example (qgis_process): qgis_process run pmtl:render_map -- INPUT=/data/ortho.tif "
        "CLASS_MAP=/out/classes.tif DETECTIONS=/out/detections.gpkg WIDTH=1600 OUTPUT=/out/map.png"
    )

    INPUT = "INPUT"
    CLASS_MAP = "CLASS_MAP"
    DETECTIONS = "DETECTIONS"
    OPACITY = "OPACITY"
    WIDTH = "WIDTH"
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
        if classes_in is not None:
            classes = QgsRasterLayer(classes_in.source(), "classes", classes_in.providerType())
            apply_class_palette(classes)
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
        image = QImage(QSize(width, height), QImage.Format_ARGB32_Premultiplied)
        image.fill(QColor(255, 255, 255))
        painter = QPainter(image)
        job = QgsMapRendererCustomPainterJob(settings, painter)
        job.renderSynchronously()
        painter.end()
        out_path = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        if not image.save(out_path, "PNG"):
            raise QgsProcessingException(f"Map image: could not write {out_path}.")
        feedback.pushInfo(f"Rendered {width}×{height} px: {out_path}")
        return {self.OUTPUT: out_path}
