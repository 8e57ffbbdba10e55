"""Parameters as data: an algorithm declares its parameters as a flat list of specs, one call each, and
:meth:`~pmtl_qgis.algorithms.base.PmtlAlgorithm.initAlgorithm` turns them into ``QgsProcessingParameter*`` objects
(in the spirit of QGIS's own GDAL algorithms). Each helper below names one parameter kind; its keyword options are the
QGIS constructor's (``optional``, ``defaultValue``, ``minValue``, ``fileFilter`` …) plus ``advanced``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qgis.core import (
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingOutputRasterLayer,
    QgsProcessingOutputString,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterBand,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorLayer,
)

KINDS: dict[str, tuple[type, dict[str, Any]]] = {
    "band": (QgsProcessingParameterBand, {}),
    "boolean": (QgsProcessingParameterBoolean, {}),
    "double": (QgsProcessingParameterNumber, {"type": QgsProcessingParameterNumber.Double}),
    "enum": (QgsProcessingParameterEnum, {}),
    "extent": (QgsProcessingParameterExtent, {}),
    "field": (QgsProcessingParameterField, {}),
    "file": (QgsProcessingParameterFile, {}),
    "file_out": (QgsProcessingParameterFileDestination, {}),
    "folder": (QgsProcessingParameterFile, {"behavior": QgsProcessingParameterFile.Folder}),
    "folder_out": (QgsProcessingParameterFolderDestination, {}),
    "integer": (QgsProcessingParameterNumber, {"type": QgsProcessingParameterNumber.Integer}),
    "layers": (QgsProcessingParameterMultipleLayers, {}),
    "raster": (QgsProcessingParameterRasterLayer, {}),
    "raster_out": (QgsProcessingParameterRasterDestination, {}),
    "sink": (QgsProcessingParameterFeatureSink, {}),
    "source": (QgsProcessingParameterFeatureSource, {}),
    "text": (QgsProcessingParameterString, {}),
    "vector": (QgsProcessingParameterVectorLayer, {}),
}
"""Parameter kinds by the word a spec names them with: the QGIS class and the constructor options the word implies."""

OUTPUT_KINDS: dict[str, type] = {
    "file": QgsProcessingOutputFile,
    "number": QgsProcessingOutputNumber,
    "raster": QgsProcessingOutputRasterLayer,
    "string": QgsProcessingOutputString,
    "vector": QgsProcessingOutputVectorLayer,
}
"""Output kinds (see :func:`output`) by the word that names them."""

ADVANCED_OPTIONAL: dict[str, Any] = {"advanced": True, "optional": True}
"""``**ADVANCED_OPTIONAL``: a field under Advanced Parameters that may stay empty (the engine's default applies)."""


@dataclass(frozen=True)
class Spec:
    """One parameter: its kind (a word of :data:`KINDS`), name, label, help text, QGIS constructor options (``enum``
    takes its choices as ``options``), whether it sits under Advanced Parameters and the engine's word for it (a
    command-line flag such as ``--tile-size`` or a config key such as ``optim.epochs``: numbers that name one become
    engine arguments by themselves, see :meth:`~pmtl_qgis.algorithms.base.PmtlAlgorithm.engine_numbers`); or, with
    ``output``, one output (a word of :data:`OUTPUT_KINDS`, no help)."""

    kind: str
    name: str
    label: str
    help: str
    options: Mapping[str, Any] = field(default_factory=dict)
    advanced: bool = False
    output: bool = False
    engine: str = ""

    def build(self) -> tuple[type, dict[str, Any]]:
        """The QGIS class and its keyword arguments (besides name and description)."""
        if self.output:
            return OUTPUT_KINDS[self.kind], {}
        kind, implied = KINDS[self.kind]
        return kind, {**implied, **self.options}


def spec(kind: str, name: str, label: str, help: str, advanced: bool = False, engine: str = "", **options: Any) -> Spec:
    """A parameter spec, one line in an algorithm's list: ``spec("integer", "SIZE", "Chip size (px)", "…",
    minValue=16)``. For ``enum``, ``options`` is the list of choices (any sequence)."""
    if kind == "enum":
        options["options"] = list(options["options"])
    return Spec(kind, name, label, help, options, advanced, engine=engine)


def output(kind: str, name: str, label: str) -> Spec:
    """An output besides the destination parameters (what a model chains on): ``output("file", "CHECKPOINT",
    "Best checkpoint (best.pt)")``; ``kind`` is a word of :data:`OUTPUT_KINDS`."""
    return Spec(kind, name, label, "", output=True)
