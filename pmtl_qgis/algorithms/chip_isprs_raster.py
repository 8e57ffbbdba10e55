"""pmtl:chip_isprs_raster: one image raster with its ISPRS RGB-coded label raster → a chip dataset folder, every
chip in the chosen split."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from qgis.core import QgsProcessingContext, QgsProcessingFeedback

from .base import is_unset, raster_path
from .chip_base import ChipAlgorithm
from .params import ADVANCED_OPTIONAL, Spec, spec

SPLITS = ("train", "val", "test")


class ChipIsprsRaster(ChipAlgorithm):
    ALG_ID = "chip_isprs_raster"
    DISPLAY_NAME = "Chip an image with an ISPRS label raster"
    ENGINE_PARAMS: ClassVar[dict[str, str]] = {"scale_max": "VALUE_MAX", "image": "INPUT", "labels": "LABEL"}
    HELP = (
        "Cuts one orthophoto raster and its label raster, coloured as the ISPRS label tiles (white impervious, "
        "blue building, cyan low vegetation, green tree, yellow car, red clutter), into square chips, and writes a "
        "chip dataset folder: images, class masks, eroded masks (from the optional 'noBoundary' label), detection "
        "boxes from connected blobs of building / tree / car, and a manifest with every chip's pixel window and "
        "georeferencing. All chips go to the chosen split; chip more rasters into other folders for other splits. "
        "For labels of your own (polygons or a class raster) use 'Chip rasters with your own labels'.\n\n"
        "The stride is a real stride: a stride smaller than the chip size makes overlapping chips; the last chip "
        "of a row is aligned to the tile border.\n\n"
        "Example (qgis_process): qgis_process run pmtl:chip_isprs_raster -- INPUT=/data/area1.tif "
        "LABEL=/data/area1_label.tif SPLIT=0 SIZE=320 STRIDE=320 OUTPUT=/data/chips_area1"
    )

    def inputs(self) -> list[Spec]:
        label = "Same grid as the image; colours as in ISPRS label tiles (white impervious, blue building, …)."
        eroded = "Optional; black boundary pixels are ignored in evaluation. Without it the label is used."
        return [
            spec("raster", "INPUT", "Image raster", "An orthophoto, e.g. a 3-band NIR-R-G or R-G-B GeoTIFF."),
            spec("raster", "LABEL", "Label raster (ISPRS RGB colours)", label),
            spec("raster", "ERODED", "Eroded label raster (noBoundary)", eroded, optional=True),
            spec("enum", "SPLIT", "Split", "Which split the chips belong to.", options=SPLITS, defaultValue=0),
        ]

    def extra(self) -> list[Spec]:
        band_names = (
            "Names of the image bands in order, comma separated, e.g. 'nir,red,green' (empty: band1..bandN). "
            "They travel into the model and let 'Detect and segment' check its input."
        )
        return [spec("text", "BAND_NAMES", "Band names", band_names, **ADVANCED_OPTIONAL)]

    def engine_call(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> tuple[Callable[..., Any], dict[str, Any]]:
        tile = self._tile_spec(parameters, context)
        feedback.pushInfo(f"Chipping {tile.image} with labels {tile.label} into split '{tile.split}'")
        text = "" if is_unset(parameters, "BAND_NAMES") else self.parameterAsString(parameters, "BAND_NAMES", context)
        names = [name.strip() for name in text.split(",") if name.strip()]
        return self.engine("engine.chip").chip_tiles, {"tiles": [tile], "band_names": names or None}

    def _tile_spec(self, parameters: dict[str, Any], context: QgsProcessingContext) -> Any:
        isprs = self.engine("engine.data.isprs")
        image_layer = self.parameterAsRasterLayer(parameters, "INPUT", context)
        image = raster_path(image_layer, "Image raster")
        label = raster_path(self.parameterAsRasterLayer(parameters, "LABEL", context), "Label raster")
        eroded = raster_path(self.parameterAsRasterLayer(parameters, "ERODED", context), "Eroded label raster")
        split = SPLITS[self.parameterAsEnum(parameters, "SPLIT", context)]
        name = Path(image).stem if image else image_layer.name()
        return isprs.TileSpec(
            name=name, image=Path(image), label=Path(label), eroded=Path(eroded) if eroded else None, split=split
        )
