"""pmtl:chip_own_labels: your rasters with your own labels (a polygon layer or a class raster, an area of interest)
→ a chip dataset folder for training, split into train/val by blocks or by raster."""

from __future__ import annotations

from typing import Any

from qgis.core import QgsProcessingContext, QgsProcessingFeedback

from .base import is_unset, raster_path
from .chip_base import POLYGON_LAYERS, ImageChipAlgorithm
from .params import ADVANCED_OPTIONAL, Spec, spec

TASKS = ("both", "det", "seg")


class ChipOwnLabels(ImageChipAlgorithm):
    ALG_ID = "chip_own_labels"
    DISPLAY_NAME = "Chip rasters with your own labels"
    IMAGES_HELP = (
        "Your orthophotos (1 to N bands, same bands in each), labelled by the polygon layer or the class raster."
    )
    HELP = (
        "Cuts your own orthophotos (any band count) into square chips labelled by your own data, and writes a chip "
        "dataset folder for training: images, class masks, detection boxes and a manifest with every chip's "
        "source, pixel window and georeferencing.\n\n"
        "Labels: EITHER a polygon layer (optional class field; boxes are the polygons' envelopes, masks their "
        "rasterisation, background elsewhere) OR a class raster (integer values; nodata ignored), for detection, "
        "segmentation or both. With an area of interest, nothing outside it is labelled and no detection chip is "
        "cut there. Chips are split into train/val by square blocks or by raster; chips never share pixels across "
        "splits.\n\n"
        "Example (qgis_process): qgis_process run pmtl:chip_own_labels -- IMAGES=/data/ortho.tif "
        "POLYGONS=/data/buildings.gpkg CLASS_FIELD=class TASK=1 OUTPUT=/data/chips_mine"
    )

    def inputs(self) -> list[Spec]:
        polygons = (
            "Objects / areas you labelled (any CRS: reprojected to each image's). Invalid geometries are "
            "repaired or skipped and counted. Give this or 'Class raster'."
        )
        field = "Attribute holding each polygon's class; its distinct values become the classes (empty: one class)."
        raster = "A class raster on the images' grid (integer class values; nodata ignored), instead of polygons."
        task = "both: detection boxes and segmentation masks; det / seg: one task (partial labels)."
        aoi = "Where the labels are complete: pixels outside are ignored and no detection chip is cut there."
        classes = "List of {name, value, colour}: value = class field value or class raster value."
        class_files = {"fileFilter": "YAML/JSON (*.yaml *.yml *.json)", **ADVANCED_OPTIONAL}
        field_options = {"parentLayerParameterName": "POLYGONS", "optional": True}
        return [
            *self.image_specs(),
            spec("source", "POLYGONS", "Label polygons", polygons, **POLYGON_LAYERS, optional=True),
            spec("field", "CLASS_FIELD", "Class field", field, **field_options),
            spec("raster", "LABEL", "Class raster (instead of polygons)", raster, optional=True),
            spec("enum", "TASK", "Labels are for", task, options=TASKS, defaultValue=0),
            self.aoi_spec(aoi),
            spec("file", "CLASSES_FILE", "Class table (YAML/JSON)", classes, **class_files),
        ]

    def check_values(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str | None:
        polygons = not is_unset(parameters, "POLYGONS")
        if polygons == (not is_unset(parameters, "LABEL")):
            return (
                f"Give exactly one of 'Label polygons' or 'Class raster' (found {'both' if polygons else 'neither'})."
            )
        return None

    def label_source(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> Any:
        polygons = self.vector_path(parameters, "POLYGONS", context, feedback)
        raster = raster_path(self.parameterAsRasterLayer(parameters, "LABEL", context), "Class raster")
        field = self.parameterAsString(parameters, "CLASS_FIELD", context) or None
        classes = self.parameterAsFile(parameters, "CLASSES_FILE", context) or None
        return self.engine("engine.chip.userdata").LabelSource(
            TASKS[self.parameterAsEnum(parameters, "TASK", context)], polygons or raster,
            field if polygons else None, None, classes, self.vector_path(parameters, "AOI", context, feedback),
        )  # fmt: skip
