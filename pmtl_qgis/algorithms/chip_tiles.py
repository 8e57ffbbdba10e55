"""pmtl:chip_tiles: an ISPRS folder, or one raster + label raster, → a chip dataset folder for training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsRasterLayer,
)

from .base import PmtlAlgorithm, advanced, is_unset, with_help

DATASETS = ("vaihingen", "potsdam")
POTSDAM_BANDS = ("RGB", "IRRG", "RGBIR")
SPLITS = ("train", "val", "test")
CONNECTIVITY = (4, 8)


def raster_path(layer: QgsRasterLayer | None, what: str) -> str | None:
    """File path behind a raster layer; the engine reads files with GDAL, so other providers are refused."""
    if layer is None:
        return None
    if layer.providerType() != "gdal":
        raise QgsProcessingException(
            f"{what}: layer '{layer.name()}' comes from the '{layer.providerType()}' provider; pmtl needs a raster "
            f"file GDAL can read (save the layer as GeoTIFF first)."
        )
    return layer.source().split("|")[0]


class ChipTiles(PmtlAlgorithm):
    ALG_ID = "chip_tiles"
    DISPLAY_NAME = "Chip tiles into a training dataset"
    GROUP_ID = "data"
    GROUP_NAME = "Data"
    REQUIRED_MODULES = ("numpy", "osgeo.gdal")
    HELP = (
        "Cuts large orthophoto tiles and their ISPRS RGB-coded label rasters into square chips and writes a chip "
        "dataset folder (images, class masks, eroded masks, detection boxes from connected blobs of building / tree "
        "/ car, and a manifest with every chip's source tile, pixel window and georeferencing).\n\n"
        "Give EITHER an ISPRS dataset folder (Vaihingen or Potsdam layout, standard train/val split) OR an image "
        "raster layer with its label raster (and optionally the eroded 'noBoundary' label), which all go to the "
        "chosen split. The stride is a real stride: stride < size makes overlapping chips; the last chip of a row "
        "is aligned to the tile border.\n\n"
        "Example (qgis_process): qgis_process run pmtl:chip_tiles -- INPUT_FOLDER=/data/vaihingen DATASET=0 "
        "SIZE=320 STRIDE=320 OUTPUT=/data/chips_vaihingen"
    )

    INPUT_FOLDER = "INPUT_FOLDER"
    DATASET = "DATASET"
    POTSDAM = "POTSDAM_BANDS"
    INPUT = "INPUT"
    LABEL = "LABEL"
    ERODED = "ERODED"
    SPLIT = "SPLIT"
    SIZE = "SIZE"
    STRIDE = "STRIDE"
    CONNECTIVITY = "CONNECTIVITY"
    MIN_AREA = "MIN_AREA"
    VALUE_MAX = "VALUE_MAX"
    BAND_NAMES = "BAND_NAMES"
    SPLITS_FILE = "SPLITS_FILE"
    OVERWRITE = "OVERWRITE"
    OUTPUT = "OUTPUT"

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        self.addParameter(
            with_help(
                QgsProcessingParameterFile(
                    self.INPUT_FOLDER,
                    self.tr("ISPRS dataset folder"),
                    behavior=QgsProcessingParameterFile.Folder,
                    optional=True,
                ),
                "Root of a Vaihingen or Potsdam download (or of 'Generate synthetic ISPRS-like data').",
            )
        )
        self.addParameter(
            with_help(
                QgsProcessingParameterEnum(
                    self.DATASET, self.tr("Dataset layout"), options=list(DATASETS), defaultValue=0
                ),
                "Layout of the dataset folder (ignored for raster layers).",
            )
        )
        self.addParameter(
            with_help(
                QgsProcessingParameterRasterLayer(
                    self.INPUT, self.tr("Image raster (instead of a folder)"), optional=True
                ),
                "An orthophoto, e.g. a 3-band NIR-R-G or R-G-B GeoTIFF.",
            )
        )
        self.addParameter(
            with_help(
                QgsProcessingParameterRasterLayer(
                    self.LABEL, self.tr("Label raster (ISPRS RGB colours)"), optional=True
                ),
                "Same grid as the image; colours as in ISPRS label tiles (white impervious, blue building, …).",
            )
        )
        self.addParameter(
            with_help(
                QgsProcessingParameterRasterLayer(
                    self.ERODED, self.tr("Eroded label raster (noBoundary)"), optional=True
                ),
                "Optional; black boundary pixels are ignored in evaluation. Without it the label is used.",
            )
        )
        self.addParameter(
            with_help(
                QgsProcessingParameterEnum(
                    self.SPLIT, self.tr("Split for the raster layers"), list(SPLITS), defaultValue=0
                ),
                "Which split the chips of the raster layers belong to.",
            )
        )
        self.addParameter(
            with_help(
                QgsProcessingParameterNumber(
                    self.SIZE, self.tr("Chip size (px)"), QgsProcessingParameterNumber.Integer, 320, minValue=16
                ),
                "Side of the square chips (the paper: 320).",
            )
        )
        self.addParameter(
            with_help(
                QgsProcessingParameterNumber(
                    self.STRIDE, self.tr("Stride (px)"), QgsProcessingParameterNumber.Integer, 320, minValue=1
                ),
                "Step between chips; smaller than the size gives overlapping chips.",
            )
        )
        self.addParameter(
            advanced(
                with_help(
                    QgsProcessingParameterEnum(
                        self.POTSDAM, self.tr("Potsdam bands"), list(POTSDAM_BANDS), defaultValue=0, optional=True
                    ),
                    "Which Potsdam orthophoto folder to read: 2_Ortho_RGB, 3_Ortho_IRRG or 4_Ortho_RGBIR.",
                )
            )
        )
        self.addParameter(
            advanced(
                with_help(
                    QgsProcessingParameterEnum(
                        self.CONNECTIVITY,
                        self.tr("Box connectivity"),
                        [str(c) for c in CONNECTIVITY],
                        optional=True,
                    ),
                    "Pixel connectivity of the blobs that become boxes (empty: the engine's default).",
                )
            )
        )
        self.addParameter(
            advanced(
                with_help(
                    QgsProcessingParameterNumber(
                        self.MIN_AREA,
                        self.tr("Minimum box area (px)"),
                        QgsProcessingParameterNumber.Integer,
                        None,
                        True,
                        0,
                    ),
                    "Blobs smaller than this give no box (empty: the engine's default).",
                )
            )
        )
        self.addParameter(
            advanced(
                with_help(
                    QgsProcessingParameterNumber(
                        self.VALUE_MAX,
                        self.tr("Value scaling maximum (uint16 imagery)"),
                        QgsProcessingParameterNumber.Double,
                        None,
                        True,
                        1.0,
                    ),
                    "Raw value that maps to 1.0 for 16-bit imagery, e.g. 4095 for 12-bit sensors.",
                )
            )
        )
        self.addParameter(
            advanced(
                with_help(
                    QgsProcessingParameterString(self.BAND_NAMES, self.tr("Band names (raster layers)"), optional=True),
                    "Names of the image bands in order, comma separated, e.g. 'nir,red,green' (empty: band1..bandN). "
                    "They travel into the model and let 'Detect and segment' check its input.",
                )
            )
        )
        self.addParameter(
            advanced(
                with_help(
                    QgsProcessingParameterFile(
                        self.SPLITS_FILE, self.tr("Split override (JSON)"), fileFilter="JSON (*.json)", optional=True
                    ),
                    "Tile name → split (train/val/test) replacing the standard ISPRS split (dataset folder only).",
                )
            )
        )
        self.addParameter(
            advanced(
                with_help(
                    QgsProcessingParameterBoolean(self.OVERWRITE, self.tr("Overwrite an existing chip dataset"), False),
                    "Without it, an output folder that already has files is refused.",
                )
            )
        )
        self.addParameter(
            with_help(
                QgsProcessingParameterFolderDestination(self.OUTPUT, self.tr("Chip dataset folder")),
                "Written with manifest.json last: an interrupted run never looks complete.",
            )
        )

    def check_values(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str | None:
        folder = not is_unset(parameters, self.INPUT_FOLDER)
        image = not is_unset(parameters, self.INPUT)
        label = not is_unset(parameters, self.LABEL)
        if folder == (image or label):
            return (
                "Give either 'ISPRS dataset folder' or 'Image raster' + 'Label raster', not both and not neither "
                f"(found folder={'set' if folder else 'empty'}, image={'set' if image else 'empty'})."
            )
        if image != label:
            return "'Image raster' and 'Label raster' go together: both are needed to chip raster layers."
        return None

    def processAlgorithm(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        chip = self.engine("engine.chip")
        out_dir = Path(self.parameterAsString(parameters, self.OUTPUT, context))
        options: dict[str, Any] = {
            "out_dir": out_dir,
            "size": self.parameterAsInt(parameters, self.SIZE, context),
            "stride": self.parameterAsInt(parameters, self.STRIDE, context),
            "overwrite": self.parameterAsBool(parameters, self.OVERWRITE, context),
        }
        if not is_unset(parameters, self.CONNECTIVITY):
            options["connectivity"] = CONNECTIVITY[self.parameterAsEnum(parameters, self.CONNECTIVITY, context)]
        options["min_area"] = self.optional_number(parameters, self.MIN_AREA, context, integer=True)
        options["scale_max"] = self.optional_number(parameters, self.VALUE_MAX, context)
        if not is_unset(parameters, self.INPUT_FOLDER):
            dataset = DATASETS[self.parameterAsEnum(parameters, self.DATASET, context)]
            if dataset == "potsdam" and not is_unset(parameters, self.POTSDAM):
                options["bands"] = POTSDAM_BANDS[self.parameterAsEnum(parameters, self.POTSDAM, context)]
            if not is_unset(parameters, self.SPLITS_FILE):
                options["splits"] = self.existing_path(
                    self.parameterAsFile(parameters, self.SPLITS_FILE, context), "Split override"
                )
            root = self.existing_path(
                self.parameterAsFile(parameters, self.INPUT_FOLDER, context), "ISPRS dataset folder"
            )
            self.call_engine(chip.chip_dataset, feedback, dataset=dataset, root=root, **options)
        else:
            tile = self._tile_spec(parameters, context)
            feedback.pushInfo(f"Chipping {tile.image} with labels {tile.label} into split '{tile.split}'")
            names = [
                n.strip() for n in self.parameterAsString(parameters, self.BAND_NAMES, context).split(",") if n.strip()
            ]
            self.call_engine(chip.chip_tiles, feedback, tiles=[tile], band_names=names or None, **options)
        return {self.OUTPUT: str(out_dir)}

    def _tile_spec(self, parameters: dict[str, Any], context: QgsProcessingContext) -> Any:
        isprs = self.engine("engine.data.isprs")
        image_layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        image = raster_path(image_layer, "Image raster")
        label = raster_path(self.parameterAsRasterLayer(parameters, self.LABEL, context), "Label raster")
        eroded = raster_path(self.parameterAsRasterLayer(parameters, self.ERODED, context), "Eroded label raster")
        split = SPLITS[self.parameterAsEnum(parameters, self.SPLIT, context)]
        name = Path(image).stem if image else image_layer.name()
        return isprs.TileSpec(
            name=name, image=Path(image), label=Path(label), eroded=Path(eroded) if eroded else None, split=split
        )
