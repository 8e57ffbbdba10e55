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

from .base import PmtlAlgorithm, advanced, with_help

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
        self.addParameter(
            with_help(
                QgsProcessingParameterEnum(self.DOMAIN, self.tr("Domain"), options=list(DOMAINS), defaultValue=0),
                "vaihingen: NIR-R-G, 9 cm, small red-roof houses; potsdam: R-G-B, 5 cm, large grey flat-roof blocks.",
            )
        )
        self.addParameter(
            with_help(
                QgsProcessingParameterNumber(
                    self.SEED, self.tr("Random seed"), QgsProcessingParameterNumber.Integer, 0, minValue=0
                ),
                "Same seed, same scenes.",
            )
        )
        self.addParameter(
            advanced(
                with_help(
                    QgsProcessingParameterNumber(
                        self.TILES, self.tr("Number of tiles"), QgsProcessingParameterNumber.Integer, None, True, 1
                    ),
                    "How many tiles to write (empty: the engine's default, the benchmark's tile count).",
                )
            )
        )
        self.addParameter(
            advanced(
                with_help(
                    QgsProcessingParameterNumber(
                        self.TILE_SIZE_M,
                        self.tr("Tile side (metres)"),
                        QgsProcessingParameterNumber.Double,
                        None,
                        True,
                        3.0,
                    ),
                    "Side of each square tile on the ground; pixels = metres / GSD (empty: benchmark-like sizes).",
                )
            )
        )
        self.addParameter(
            advanced(
                with_help(
                    QgsProcessingParameterBoolean(self.OVERWRITE, self.tr("Overwrite a non-empty folder"), False),
                    "Without it, an output folder that already has files is refused.",
                )
            )
        )
        self.addParameter(
            with_help(
                QgsProcessingParameterFolderDestination(self.OUTPUT, self.tr("Output dataset folder")),
                "Receives the ISPRS folders (top/, gts_for_participants/, … or 2_Ortho_RGB/, 5_Labels_all/, …).",
            )
        )
        self.addOutput(QgsProcessingOutputRasterLayer(self.IMAGE, self.tr("Sample image tile (held out)")))
        self.addOutput(QgsProcessingOutputRasterLayer(self.LABEL, self.tr("Label of the sample tile")))
        self.addOutput(QgsProcessingOutputString(self.DATASET, self.tr("Dataset kind (vaihingen|potsdam)")))

    def processAlgorithm(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        synth = self.engine("engine.synth")
        domain = DOMAINS[self.parameterAsEnum(parameters, self.DOMAIN, context)]
        out_dir = Path(self.parameterAsString(parameters, self.OUTPUT, context))
        self.call_engine(
            synth.generate,
            feedback,
            domain=domain,
            out_dir=out_dir,
            seed=self.parameterAsInt(parameters, self.SEED, context),
            tiles=self.optional_number(parameters, self.TILES, context, integer=True),
            tile_size_m=self.optional_number(parameters, self.TILE_SIZE_M, context),
            overwrite=self.parameterAsBool(parameters, self.OVERWRITE, context),
        )
        results: dict[str, Any] = {self.OUTPUT: str(out_dir), self.DATASET: domain}
        sample = sample_tile(out_dir, domain)
        if sample is not None:
            results[self.IMAGE], results[self.LABEL] = str(sample[0]), str(sample[1])
            feedback.pushInfo(f"Sample tile: {sample[0]}")
        return results
