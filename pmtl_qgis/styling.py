"""Styles applied to outputs when QGIS loads them: the model's class colours for class maps and detection boxes.

Colours come from the model (``ModelInfo.head(task).colors``); a class the model does not know (an older
layer, a field edited by hand) gets a deterministic fallback colour from ``engine.core.modelio.class_colors``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

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
    QgsSimpleFillSymbolLayer,
    QgsTextBufferSettings,
    QgsTextFormat,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
)
from qgis.PyQt import sip
from qgis.PyQt.QtGui import QColor

from .layer_reader import is_temporary_output
from .scope import import_engine

SCORE_LABEL = '"class" || \' \' || format_number("score", 2)'
"""Label expression of a detection: class name and score with two decimals."""

RGB = tuple[int, int, int]
Classes = tuple[Sequence[str], Sequence[RGB]]
"""Class names and their RGB colours, in class-id order."""


def fallback_colors(names: Sequence[str]) -> tuple[RGB, ...]:
    """The engine's colours for classes without colours from a model (ISPRS names keep their ISPRS colours)."""
    return import_engine("engine.core.modelio").class_colors(list(names))


def complete_classes(classes: Classes | None, found: Sequence[str] = ()) -> Classes:
    """The model's classes plus a fallback colour for every name in ``found`` the model does not list."""
    names, colours = (list(classes[0]), list(classes[1])) if classes is not None else ([], [])
    if len(colours) != len(names):
        colours = list(fallback_colors(names))
    extra = [str(name) for name in found if str(name) not in names]
    if extra:
        spare = [c for c in fallback_colors(names + extra) if c not in colours]
        names += extra
        colours += spare[: len(extra)]
    return names, colours


def raster_classes(layer: QgsRasterLayer) -> Classes:
    """Classes of a class map written by pmtl: names from its ``CLASS_NAMES`` band metadata, colours from its
    colour table (entries without a name are dropped; nodata is transparent)."""
    table = {int(item.value): item for item in layer.dataProvider().colorTable(1)}
    names = _class_names_of(layer.source().split("|")[0])
    if not names and table:
        names = [item.label or str(value) for value, item in sorted(table.items()) if item.color.alpha() > 0]
    if not names:  # no metadata at all: one class per value found in the raster
        values = [int(c.value) for c in QgsPalettedRasterRenderer.classDataFromRaster(layer.dataProvider(), 1)]
        names = [str(value) for value in range(max(values) + 1)] if values else []
    colours = [
        table[index].color.getRgb()[:3] if index in table and table[index].color.alpha() > 0 else None
        for index in range(len(names))
    ]
    if any(colour is None for colour in colours):
        colours = list(fallback_colors(names))
    return names, colours


def _class_names_of(path: str) -> list[str]:
    """``CLASS_NAMES`` (a JSON list) of band 1, read quietly: [] when absent or unreadable."""
    import json

    from osgeo import gdal

    gdal.PushErrorHandler("CPLQuietErrorHandler")  # scoped: GDAL's error mode stays as QGIS set it
    try:
        dataset = gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_READONLY)
        text = dataset.GetRasterBand(1).GetMetadataItem("CLASS_NAMES") if dataset is not None else None
    except RuntimeError:  # another plugin turned GDAL exceptions on
        text = None
    finally:
        gdal.PopErrorHandler()
    try:
        names = json.loads(text) if text else []
    except ValueError:
        return []
    return [str(name) for name in names] if isinstance(names, list) else []


def apply_class_palette(layer: QgsRasterLayer, classes: Classes | None = None) -> None:
    """Paletted renderer on band 1, one entry per class: ``classes`` of the model, else the raster's own."""
    names, palette = complete_classes(classes if classes is not None else raster_classes(layer))
    entries = [
        QgsPalettedRasterRenderer.Class(index, QColor(*rgb), name)
        for index, (name, rgb) in enumerate(zip(names, palette))
    ]
    layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, entries))
    layer.triggerRepaint()


def _box_symbol(rgb: RGB) -> QgsFillSymbol:
    """A class-coloured outline over a white halo, visible on a class map drawn in the same colours."""
    symbol = QgsFillSymbol.createSimple({"color": "0,0,0,0", "style": "no", "outline_color": "255,255,255,200"})
    symbol.symbolLayer(0).setStrokeWidth(1.2)
    outline = QgsSimpleFillSymbolLayer.create({"style": "no", "outline_color": "{},{},{},255".format(*rgb)})
    outline.setStrokeWidth(0.6)
    symbol.appendSymbolLayer(outline)
    return symbol


def _fill_symbol(rgb: RGB) -> QgsFillSymbol:
    return QgsFillSymbol.createSimple({"color": "{},{},{},255".format(*rgb), "outline_style": "no"})


def _categorized(field: str, values: Sequence[object], colours: Sequence[RGB], symbol) -> QgsCategorizedSymbolRenderer:
    categories = [QgsRendererCategory(value, symbol(rgb), str(value)) for value, rgb in zip(values, colours)]
    return QgsCategorizedSymbolRenderer(field, categories)


def _field_values(layer: QgsVectorLayer, field: str) -> list[str]:
    index = layer.fields().indexOf(field)
    return sorted(str(v) for v in layer.uniqueValues(index) if v is not None) if index >= 0 else []


def detection_classes(layer: QgsVectorLayer) -> Classes | None:
    """The model's classes a pmtl detections GeoPackage carries (layer metadata ``CLASS_NAMES`` /
    ``CLASS_COLORS``); None for other layers."""
    import json

    from osgeo import gdal

    path, _, option = layer.source().partition("|")
    gdal.PushErrorHandler("CPLQuietErrorHandler")  # scoped: GDAL's error mode stays as QGIS set it
    try:
        dataset = gdal.OpenEx(path, gdal.OF_VECTOR | gdal.OF_READONLY)
        name = option.split("=", 1)[1] if option.startswith("layername=") else None
        found = (dataset.GetLayerByName(name) if name else dataset.GetLayer(0)) if dataset is not None else None
        names, colours = (found.GetMetadataItem(k) for k in ("CLASS_NAMES", "CLASS_COLORS")) if found else (None, None)
        parsed = (json.loads(names), json.loads(colours)) if names and colours else None
    except (RuntimeError, ValueError):  # another plugin turned GDAL exceptions on / not our JSON
        parsed = None
    finally:
        gdal.PopErrorHandler()
    if not parsed or len(parsed[0]) != len(parsed[1]):
        return None
    return [str(n) for n in parsed[0]], [tuple(int(v) for v in c[:3]) for c in parsed[1]]


def apply_detection_style(layer: QgsVectorLayer, classes: Classes | None = None) -> None:
    """Boxes outlined in their class colour and labelled ``class score`` (the score with two decimals); without
    ``classes``, the model's classes the GeoPackage carries, else fallback colours per class name."""
    names, colours = complete_classes(classes or detection_classes(layer), _field_values(layer, "class"))
    layer.setRenderer(_categorized("class", names, colours, _box_symbol))
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
    fields = layer.fields().names()
    if "class" in fields:
        names, colours = complete_classes(classes, _field_values(layer, "class"))
        layer.setRenderer(_categorized("class", names, colours, _fill_symbol))
    elif "class_id" in fields:
        names, colours = complete_classes(classes)
        layer.setRenderer(_categorized("class_id", list(range(len(names))), colours, _fill_symbol))
    layer.triggerRepaint()


class _Styler(QgsProcessingLayerPostProcessorInterface):
    """Applies one style function to a layer Processing loads on completion (one instance per output per run)."""

    def __init__(self, style: Callable[[QgsMapLayer], None], layer_type: type) -> None:
        super().__init__()
        self._style = style
        self._layer_type = layer_type

    def postProcessLayer(
        self, layer: QgsMapLayer, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> None:
        if isinstance(layer, self._layer_type) and layer.isValid():
            self._style(layer)
        _PENDING.discard(self)  # used: the context that owns the C++ side deletes it with the run


_PENDING: set[_Styler] = set()
"""Post-processors handed to a context and not used yet. The context owns (and deletes) the C++ object but holds
no reference to the Python one, which would be garbage collected before QGIS calls it: keep it here until used, or
until its context has deleted it (a run whose layers were never loaded)."""


def _new_styler(kind: str, classes: Classes | None) -> _Styler:
    for styler in [s for s in _PENDING if sip.isdeleted(s)]:
        _PENDING.discard(styler)
    style, layer_type = {
        "detections": (apply_detection_style, QgsVectorLayer),
        "class_raster": (apply_class_palette, QgsRasterLayer),
        "class_polygons": (apply_class_polygon_style, QgsVectorLayer),
    }[kind]
    styler = _Styler(functools.partial(style, classes=classes), layer_type)
    _PENDING.add(styler)
    return styler


def style_on_load(context: QgsProcessingContext, layer_id: str, kind: str, classes: Classes | None = None) -> None:
    """Style output ``layer_id`` (a path or layer id) when QGIS loads it: ``kind`` is class_raster, detections or
    class_polygons; ``classes`` (names, colours) of the model's detection head (detections) or segmentation head."""
    if layer_id and context.willLoadLayerOnCompletion(layer_id):
        context.layerToLoadOnCompletionDetails(layer_id).setPostProcessor(_new_styler(kind, classes))


def name_on_load(context: QgsProcessingContext, layer_id: str, title: str, source: QgsMapLayer) -> None:
    """Name output ``layer_id`` after what it is and its input layer when QGIS loads it: "Class map —
    top_potsdam_2_10" (every run's layers can be told apart). An input that is itself a temporary Processing output
    (a model's intermediate step, named OUTPUT or the like) names nothing: QGIS's own naming stays."""
    if is_temporary_output(source.source()):
        return
    if layer_id and context.willLoadLayerOnCompletion(layer_id):
        context.layerToLoadOnCompletionDetails(layer_id).name = f"{title} — {source.name()}"
