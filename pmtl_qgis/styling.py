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


Classes = tuple[Sequence[str], Sequence[tuple[int, int, int]]]
"""Class names and their RGB colours, in class-id order."""


def _classes(classes: Classes | None = None) -> Classes:
    if classes is not None and len(classes[0]) and len(classes[0]) == len(classes[1]):
        return classes
    isprs = import_engine("engine.core.classes")
    return isprs.SEG_CLASSES, isprs.PALETTE


def apply_class_palette(layer: QgsRasterLayer, classes: Classes | None = None) -> None:
    """Paletted renderer on band 1: one entry per class (default: ISPRS names and label-tile colours)."""
    names, palette = _classes(classes)
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


def apply_class_polygon_style(layer: QgsVectorLayer, classes: Classes | None = None) -> None:
    """Polygonised class map filled with the class colours, categorised on ``class`` (else ``class_id``)."""
    names, palette = _classes(classes)
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


# Processing keeps only a pointer to the post-processor: the Python objects must outlive the algorithm. One per
# (kind, classes), so the cache stays as small as the set of models used.
_STYLERS: dict[tuple[str, tuple | None], _Styler] = {}


def _styler(kind: str, classes: Classes | None) -> _Styler:
    key = (kind, None if classes is None else (tuple(classes[0]), tuple(map(tuple, classes[1]))))
    if key not in _STYLERS:
        if kind == "detections":
            _STYLERS[key] = _Styler(apply_detection_style, QgsVectorLayer)
        elif kind == "class_raster":
            _STYLERS[key] = _Styler(lambda layer: apply_class_palette(layer, classes), QgsRasterLayer)
        else:
            _STYLERS[key] = _Styler(lambda layer: apply_class_polygon_style(layer, classes), QgsVectorLayer)
    return _STYLERS[key]


def style_on_load(context: QgsProcessingContext, layer_id: str, kind: str, classes: Classes | None = None) -> None:
    """Style output ``layer_id`` (a path or layer id) when QGIS loads it: ``kind`` is class_raster, detections or
    class_polygons; ``classes`` (names, colours) of the model, default ISPRS."""
    if layer_id and context.willLoadLayerOnCompletion(layer_id):
        context.layerToLoadOnCompletionDetails(layer_id).setPostProcessor(_styler(kind, classes))
