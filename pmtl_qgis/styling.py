"""Styles applied to outputs when QGIS loads them: ISPRS palette for class maps, labelled boxes for detections."""

from __future__ import annotations

from collections.abc import Sequence

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsFillSymbol,
    QgsMapLayer,
    QgsPalettedRasterRenderer,
    QgsPalLayerSettings,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
    QgsRendererCategory,
    QgsTextBufferSettings,
    QgsTextFormat,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
)
from qgis.PyQt.QtGui import QColor

from .environment import import_engine

BOX_COLOURS: dict[str, tuple[int, int, int]] = {
    "building": (230, 0, 230),
    "tree": (0, 110, 0),
    "car": (255, 140, 0),
}
"""Box outline colours, chosen to stand out on top of an ISPRS-coloured class map (whose colours they avoid)."""

SCORE_LABEL = '"class" || \' \' || format_number("score", 2)'
"""Label expression of a detection: class name and score with two decimals."""


def _classes() -> tuple[Sequence[str], Sequence[tuple[int, int, int]]]:
    classes = import_engine("engine.core.classes")
    return classes.SEG_CLASSES, classes.PALETTE


def apply_class_palette(layer: QgsRasterLayer) -> None:
    """Paletted renderer on band 1: one entry per ISPRS class, named and coloured as in the label tiles."""
    names, palette = _classes()
    entries = [
        QgsPalettedRasterRenderer.Class(index, QColor(*rgb), name)
        for index, (name, rgb) in enumerate(zip(names, palette))
    ]
    layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, entries))
    layer.triggerRepaint()


def _categorized(
    field: str, colours: dict[object, tuple[int, int, int]], outline_only: bool
) -> QgsCategorizedSymbolRenderer:
    categories = []
    for value, rgb in colours.items():
        colour = "{},{},{},255".format(*rgb)
        if outline_only:
            props = {"color": "0,0,0,0", "style": "no", "outline_color": colour, "outline_width": "0.6"}
        else:
            props = {"color": colour, "outline_style": "no"}
        categories.append(QgsRendererCategory(value, QgsFillSymbol.createSimple(props), str(value)))
    return QgsCategorizedSymbolRenderer(field, categories)


def apply_detection_style(layer: QgsVectorLayer) -> None:
    """Boxes outlined by class and labelled ``class score`` (the score with two decimals)."""
    layer.setRenderer(_categorized("class", dict(BOX_COLOURS), outline_only=True))
    settings = QgsPalLayerSettings()
    settings.fieldName = SCORE_LABEL
    settings.isExpression = True
    text = QgsTextFormat()
    text.setSize(8)
    buffer = QgsTextBufferSettings()
    buffer.setEnabled(True)
    buffer.setSize(0.8)
    text.setBuffer(buffer)
    settings.setFormat(text)
    layer.setLabeling(QgsVectorLayerSimpleLabeling(settings))
    layer.setLabelsEnabled(True)
    layer.triggerRepaint()


def apply_class_polygon_style(layer: QgsVectorLayer) -> None:
    """Polygonised class map filled with the ISPRS palette, categorised on ``class`` (else ``class_id``)."""
    names, palette = _classes()
    fields = layer.fields().names()
    if "class" in fields:
        layer.setRenderer(_categorized("class", dict(zip(names, palette)), outline_only=False))
    elif "class_id" in fields:
        layer.setRenderer(_categorized("class_id", dict(enumerate(palette)), outline_only=False))
    layer.triggerRepaint()


class _Styler(QgsProcessingLayerPostProcessorInterface):
    """Applies one style function to a layer Processing loads on completion."""

    def __init__(self, style, layer_type: type) -> None:
        super().__init__()
        self._style = style
        self._layer_type = layer_type

    def postProcessLayer(
        self, layer: QgsMapLayer, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> None:
        if isinstance(layer, self._layer_type) and layer.isValid():
            self._style(layer)


# Processing keeps only a pointer to the post-processor: the Python objects must outlive the algorithm.
_STYLERS: dict[str, _Styler] = {}


def _styler(kind: str) -> _Styler:
    if kind not in _STYLERS:
        style, layer_type = {
            "class_raster": (apply_class_palette, QgsRasterLayer),
            "detections": (apply_detection_style, QgsVectorLayer),
            "class_polygons": (apply_class_polygon_style, QgsVectorLayer),
        }[kind]
        _STYLERS[kind] = _Styler(style, layer_type)
    return _STYLERS[kind]


def style_on_load(context: QgsProcessingContext, layer_id: str, kind: str) -> None:
    """Style output ``layer_id`` (a path or layer id from Processing) with ``kind`` when QGIS loads it."""
    if layer_id and context.willLoadLayerOnCompletion(layer_id):
        context.layerToLoadOnCompletionDetails(layer_id).setPostProcessor(_styler(kind))
