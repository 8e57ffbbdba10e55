"""pmtl:chip_unlabelled: rasters with no labels → a chip dataset of imagery only, which 'Train' learns from by
distillation (the teachers label it)."""

from __future__ import annotations

from typing import Any

from qgis.core import QgsProcessingContext, QgsProcessingFeedback

from .chip_base import ImageChipAlgorithm
from .params import Spec


class ChipUnlabelled(ImageChipAlgorithm):
    ALG_ID = "chip_unlabelled"
    DISPLAY_NAME = "Chip unlabelled rasters (for distillation)"
    MAKES_BOXES = False
    VAL_FRACTION = "unlabelled_val_fraction"
    IMAGES_HELP = "Your orthophotos (1 to N bands, same bands as the labelled chips you train with)."
    HELP = (
        "Cuts orthophotos that have no labels into square chips and writes a chip dataset folder of imagery only "
        "(task 'none'). 'Train' learns from it by knowledge distillation: give it as 'Unlabelled imagery' with a "
        "distillation variant and both teacher checkpoints; the teachers label every chip. Use the chip size of "
        "your labelled chips. With an area of interest, only chips inside it are cut. Training reads the chips of "
        "the train split, and every chip goes there unless 'Validation fraction' (Advanced) holds some out.\n\n"
        "Example (qgis_process): qgis_process run pmtl:chip_unlabelled -- IMAGES=/data/new_area.tif "
        "SIZE=320 STRIDE=320 OUTPUT=/data/chips_unlabelled"
    )

    def inputs(self) -> list[Spec]:
        aoi = "Only chips inside these polygons are cut (empty: the whole rasters)."
        return [*self.image_specs(), self.aoi_spec(aoi)]

    def label_source(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> Any:
        aoi = self.vector_path(parameters, "AOI", context, feedback)
        return self.engine("engine.chip.userdata").LabelSource(task="none", aoi=aoi)
