"""pmtl:generate_synthetic: the synthetic ISPRS-like twin (demo data with real ISPRS folder layouts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputRasterLayer,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
)

from .base import PmtlAlgorithm

DOMAINS = ("vaihingen", "potsdam")


def sample_tile(root: Path, domain: str) -> tuple[Path, Path] | None:
    """(image, label) of one generated tile, preferring one outside the training split (for a detection demo)."""
    from engine.data.isprs import find_isprs_tiles

    tiles = find_isprs_tiles(domain, root)
    held_out = [tile for tile in tiles if tile.split != "train"]
    chosen = (held_out or tiles)[0] if tiles else None
    return None if chosen is None else (Path(chosen.image), Path(chosen.label))


class GenerateSynthetic(PmtlAlgorithm):
    ALG_ID = "generate_synthetic"
    DISPLAY_NAME = "Generate synthetic ISPRS-like data"
    GROUP_ID = "data"
    GROUP_NAME = "Data"
    REQUIRED_MODULES = ("numpy", "osgeo.gdal")
    HELP = (
        "Writes a synthetic twin of the ISPRS 2D semantic labelling benchmark: georeferenced orthophoto tiles "
        "(Vaihingen-like NIR-R-G at 9 cm, or Potsdam-like R-G-B at 5 cm), RGB-coded label tiles and eroded "
        "'noBoundary' labels, in the real ISPRS folder layouts, so every other pmtl tool runs on it as on the "
        "real data. Deterministic per seed.\n\n"
        "Outputs: the dataset folder, plus one held-out image tile and its label raster (to chain into "
        "'Detect and segment' or 'Chip tiles' in a model).\n\n"
        "Example (qgis_process): qgis_process run pmtl:generate_synthetic -- DOMAIN=0 SEED=1 TILES=4 "
        "TILE_SIZE_M=40 OUTPUT=/tmp/vaihingen_synth"
    )

    DOMAIN = "DOMAIN"
    SEED = "SEED"
    TILES = "TILES"
    TILE_SIZE_M = "TILE_SIZE_M"
    OVERWRITE = "OVERWRITE"
    OUTPUT = "OUTPUT"
    IMAGE = "IMAGE"
    LABEL = "LABEL"
    DATASET = "DATASET"

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        number = QgsProcessingParameterNumber
        self.param(
            QgsProcessingParameterEnum,
            self.DOMAIN,
            "Domain",
            options=list(DOMAINS),
            defaultValue=0,
            help="vaihingen: NIR-R-G, 9 cm, small red-roof houses; potsdam: R-G-B, 5 cm, large grey flat-roof blocks.",
        )
        self.param(
            number,
            self.SEED,
            "Random seed",
            type=number.Integer,
            defaultValue=0,
            minValue=0,
            help="Same seed, same scenes.",
        )
        self.param(
            number,
            self.TILES,
            "Number of tiles",
            type=number.Integer,
            optional=True,
            minValue=1,
            advanced=True,
            help="How many tiles to write (empty: the engine's default, the benchmark's tile count).",
        )
        self.param(
            number,
            self.TILE_SIZE_M,
            "Tile side (metres)",
            type=number.Double,
            optional=True,
            minValue=3.0,
            advanced=True,
            help="Side of each square tile on the ground; pixels = metres / GSD (empty: benchmark-like sizes).",
        )
        self.param(
            QgsProcessingParameterBoolean,
            self.OVERWRITE,
            "Overwrite a non-empty folder",
            defaultValue=False,
            advanced=True,
            help="Without it, an output folder that already has files is refused.",
        )
        self.param(
            QgsProcessingParameterFolderDestination,
            self.OUTPUT,
            "Output dataset folder",
            help="Receives the ISPRS folders (top/, gts_for_participants/, … or 2_Ortho_RGB/, 5_Labels_all/, …).",
        )
        self.addOutput(QgsProcessingOutputRasterLayer(self.IMAGE, self.tr("Sample image tile (held out)")))
        self.addOutput(QgsProcessingOutputRasterLayer(self.LABEL, self.tr("Label of the sample tile")))
        self.addOutput(QgsProcessingOutputString(self.DATASET, self.tr("Dataset kind (vaihingen|potsdam)")))

    def process(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        synth = self.engine("engine.synth")
        domain = DOMAINS[self.parameterAsEnum(parameters, self.DOMAIN, context)]
        out_dir = Path(self.parameterAsFileOutput(parameters, self.OUTPUT, context))
        self.call_engine(
            synth.generate,
            feedback,
            domain=domain,
            out_dir=out_dir,
            seed=self.parameterAsInt(parameters, self.SEED, context),
            tiles=self.optional_number(parameters, self.TILES, context, integer=True),
            tile_size_m=self.optional_number(parameters, self.TILE_SIZE_M, context),
            overwrite=self.parameterAsBool(parameters, self.OVERWRITE, context),
            progress=self.progress(feedback),
        )
        results: dict[str, Any] = {self.OUTPUT: str(out_dir), self.DATASET: domain}
        sample = sample_tile(out_dir, domain)
        if sample is not None:
            results[self.IMAGE], results[self.LABEL] = str(sample[0]), str(sample[1])
            feedback.pushInfo(f"Sample tile: {sample[0]}")
        return results
