"""pmtl:generate_synthetic: the synthetic ISPRS-like twin (demo data with real ISPRS folder layouts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
)

from .base import PmtlAlgorithm
from .params import ADVANCED_OPTIONAL, Spec, output, spec

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
    REQUIRED_MODULES = ("numpy", "osgeo.gdal")
    HELP = (
        "Writes a synthetic twin of the ISPRS 2D semantic labelling benchmark: georeferenced orthophoto tiles "
        "(Vaihingen-like NIR-R-G at 9 cm, or Potsdam-like R-G-B at 5 cm), RGB-coded label tiles and eroded "
        "'noBoundary' labels, in the real ISPRS folder layouts, so every other pmtl tool runs on it as on the "
        "real data. Deterministic per seed.\n\n"
        "Outputs: the dataset folder, plus one held-out image tile and its label raster (to chain into "
        "'Detect and segment' or 'Chip an image with an ISPRS label raster' in a model).\n\n"
        "Example (qgis_process): qgis_process run pmtl:generate_synthetic -- DOMAIN=0 SEED=1 TILES=4 "
        "TILE_SIZE_M=40 OUTPUT=/tmp/vaihingen_synth"
    )

    def parameters(self) -> list[Spec]:
        domain = "vaihingen: NIR-R-G, 9 cm, small red-roof houses; potsdam: R-G-B, 5 cm, large grey flat-roof blocks."
        tiles = "How many tiles to write (empty: the engine's default, the benchmark's tile count)."
        side = "Side of each square tile on the ground; pixels = metres / GSD (empty: benchmark-like sizes)."
        folder = "Receives the ISPRS folders (top/, gts_for_participants/, … or 2_Ortho_RGB/, 5_Labels_all/, …)."
        return [
            spec("enum", "DOMAIN", "Domain", domain, options=DOMAINS, defaultValue=0),
            spec("integer", "SEED", "Random seed", "Same seed, same scenes.", defaultValue=0, minValue=0),
            spec("integer", "TILES", "Number of tiles", tiles, **ADVANCED_OPTIONAL, minValue=1),
            spec("double", "TILE_SIZE_M", "Tile side (metres)", side, **ADVANCED_OPTIONAL, minValue=3.0),
            self.overwrite_spec("Overwrite a non-empty folder"),
            spec("folder_out", "OUTPUT", "Output dataset folder", folder),
            output("raster", "IMAGE", "Sample image tile (held out)"),
            output("raster", "LABEL", "Label of the sample tile"),
            output("string", "DATASET", "Dataset kind (vaihingen|potsdam)"),
        ]

    def process(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        synth = self.engine("engine.synth")
        domain = DOMAINS[self.parameterAsEnum(parameters, "DOMAIN", context)]
        out_dir = Path(self.parameterAsFileOutput(parameters, "OUTPUT", context))
        self.call_engine(
            synth.generate,
            feedback,
            domain=domain,
            out_dir=out_dir,
            seed=self.parameterAsInt(parameters, "SEED", context),
            tiles=self.optional_number(parameters, "TILES", context, integer=True),
            tile_size_m=self.optional_number(parameters, "TILE_SIZE_M", context),
            overwrite=self.parameterAsBool(parameters, "OVERWRITE", context),
            progress=self.progress(feedback),
        )
        results: dict[str, Any] = {"OUTPUT": str(out_dir), "DATASET": domain}
        sample = sample_tile(out_dir, domain)
        if sample is not None:
            results["IMAGE"], results["LABEL"] = str(sample[0]), str(sample[1])
            feedback.pushInfo(f"Sample tile: {sample[0]}")
        return results
