"""pmtl:chip_isprs: a Vaihingen or Potsdam dataset folder (the ISPRS download, or 'Generate synthetic ISPRS-like
data') → a chip dataset folder for training, with the standard train/val split."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qgis.core import QgsProcessingContext, QgsProcessingFeedback

from .base import is_unset
from .chip_base import ChipAlgorithm
from .params import ADVANCED_OPTIONAL, Spec, spec

DATASETS = ("vaihingen", "potsdam")
POTSDAM_BANDS = ("RGB", "IRRG", "RGBIR")


class ChipIsprs(ChipAlgorithm):
    ALG_ID = "chip_isprs"
    DISPLAY_NAME = "Chip an ISPRS dataset folder"
    HELP = (
        "Cuts the orthophoto tiles of an ISPRS 2D semantic labelling dataset folder (Vaihingen or Potsdam layout, "
        "or the output of 'Generate synthetic ISPRS-like data') and their RGB-coded label rasters into square "
        "chips, and writes a chip dataset folder: images, class masks, eroded (noBoundary) masks, detection boxes "
        "from connected blobs of building / tree / car, and a manifest with every chip's source tile, pixel window "
        "and georeferencing. Tiles go to the standard train/val split (or to the split a JSON override names).\n\n"
        "The stride is a real stride: a stride smaller than the chip size makes overlapping chips; the last chip "
        "of a row is aligned to the tile border.\n\n"
        "Example (qgis_process): qgis_process run pmtl:chip_isprs -- INPUT_FOLDER=/data/vaihingen DATASET=0 "
        "SIZE=320 STRIDE=320 OUTPUT=/data/chips_vaihingen"
    )

    def inputs(self) -> list[Spec]:
        folder = "Root of a Vaihingen or Potsdam download (or of 'Generate synthetic ISPRS-like data')."
        layout = "Layout of the dataset folder."
        return [
            spec("folder", "INPUT_FOLDER", "ISPRS dataset folder", folder),
            spec("enum", "DATASET", "Dataset layout", layout, options=DATASETS, defaultValue=0),
        ]

    def extra(self) -> list[Spec]:
        potsdam = "Which Potsdam orthophoto folder to read: 2_Ortho_RGB, 3_Ortho_IRRG or 4_Ortho_RGBIR."
        splits = "Tile name → split (train/val/test) replacing the standard ISPRS split."
        bands = {"options": POTSDAM_BANDS, "defaultValue": 0, **ADVANCED_OPTIONAL}
        return [
            spec("enum", "POTSDAM_BANDS", "Potsdam bands", potsdam, **bands),
            spec(
                "file", "SPLITS_FILE", "Split override (JSON)", splits, fileFilter="JSON (*.json)", **ADVANCED_OPTIONAL
            ),
        ]

    def engine_call(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> tuple[Callable[..., Any], dict[str, Any]]:
        dataset = DATASETS[self.parameterAsEnum(parameters, "DATASET", context)]
        bands = None
        if dataset == "potsdam" and not is_unset(parameters, "POTSDAM_BANDS"):
            bands = POTSDAM_BANDS[self.parameterAsEnum(parameters, "POTSDAM_BANDS", context)]
        root = self.optional_file(parameters, "INPUT_FOLDER", context)
        splits = self.optional_file(parameters, "SPLITS_FILE", context)
        arguments = {"dataset": dataset, "root": root, "bands": bands, "splits": splits}
        return self.engine("engine.chip").chip_dataset, arguments
