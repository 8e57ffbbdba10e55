"""pmtl:chip_tiles: an ISPRS folder, one raster + ISPRS label raster, or your own rasters with your own labels
(polygon layer or class raster, an area of interest) → a chip dataset folder for training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsRasterLayer,
)

from ..layer_reader import is_temporary_output
from .base import PmtlAlgorithm, is_unset
from .params import ADVANCED_OPTIONAL, Spec, spec

DATASETS = ("vaihingen", "potsdam")
POTSDAM_BANDS = ("RGB", "IRRG", "RGBIR")
SPLITS = ("train", "val", "test")
CONNECTIVITY = (4, 8)
TASKS = ("both", "det", "seg", "none")
SPLIT_BY = ("block", "tile")


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
    REQUIRED_MODULES = ("numpy", "osgeo.gdal")
    ENGINE_PARAMS: ClassVar[dict[str, str]] = {"scale_max": "VALUE_MAX", "image": "IMAGES", "labels": "POLYGONS"}
    HELP = (
        "Cuts large orthophoto tiles and their ISPRS RGB-coded label rasters into square chips and writes a chip "
        "dataset folder (images, class masks, eroded masks, detection boxes from connected blobs of building / tree "
        "/ car, and a manifest with every chip's source tile, pixel window and georeferencing).\n\n"
        "Give EITHER an ISPRS dataset folder (Vaihingen or Potsdam layout, standard train/val split) OR an image "
        "raster layer with its label raster (and optionally the eroded 'noBoundary' label), which all go to the "
        "chosen split. OR your own data: 'Image rasters' (any band count) with a polygon layer (optional class "
        "field; boxes are the polygons' envelopes, masks their rasterisation, background elsewhere) or a class "
        "raster in 'Label raster' (integer values; nodata ignored), for the chosen task, with an optional area of "
        "interest (outside it nothing is labelled); chips are split into train/val/test by blocks or by raster "
        "(task 'none': imagery only, for distillation onto unlabelled data).\n\nThe stride is a real stride: "
        "stride < size makes overlapping chips; the last chip of a row "
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
    IMAGES = "IMAGES"
    POLYGONS = "POLYGONS"
    CLASS_FIELD = "CLASS_FIELD"
    TASK = "TASK"
    AOI = "AOI"
    CLASSES_FILE = "CLASSES_FILE"
    VAL_FRACTION = "VAL_FRACTION"
    SPLIT_BY = "SPLIT_BY"
    SEED = "SEED"
    OVERWRITE = "OVERWRITE"
    OUTPUT = "OUTPUT"

    def parameters(self) -> list[Spec]:
        return [*self._isprs(), *self._own_data(), *self._own_splits(), *self._chips(), *self._output()]

    def _isprs(self) -> list[Spec]:
        folder = "Root of a Vaihingen or Potsdam download (or of 'Generate synthetic ISPRS-like data')."
        layout = "Layout of the dataset folder (ignored for raster layers)."
        label = "Same grid as the image; colours as in ISPRS label tiles (white impervious, blue building, …)."
        eroded = "Optional; black boundary pixels are ignored in evaluation. Without it the label is used."
        image = "An orthophoto, e.g. a 3-band NIR-R-G or R-G-B GeoTIFF."
        return [
            spec("folder", self.INPUT_FOLDER, "ISPRS dataset folder", folder, optional=True),
            spec("enum", self.DATASET, "Dataset layout", layout, options=DATASETS, defaultValue=0),
            spec("raster", self.INPUT, "Image raster (instead of a folder)", image, optional=True),
            spec("raster", self.LABEL, "Label raster (ISPRS RGB colours)", label, optional=True),
            spec("raster", self.ERODED, "Eroded label raster (noBoundary)", eroded, optional=True),
        ]

    def _own_data(self) -> list[Spec]:
        images = (
            "Your orthophotos (1 to N bands, same bands in each), labelled by the polygon layer or the class "
            "raster in 'Label raster'."
        )
        polygons = (
            "Objects / areas you labelled (any CRS: reprojected to each image's). Invalid geometries are "
            "repaired or skipped and counted."
        )
        field = "Attribute holding each polygon's class; its distinct values become the classes (empty: one class)."
        task = "both: detection boxes and segmentation masks; det / seg: one task (partial labels); none: imagery only."
        aoi = "Where the labels are complete: pixels outside are ignored and no detection chip is cut there."
        rasters, polygon = {"layerType": QgsProcessing.TypeRaster}, {"types": [QgsProcessing.TypeVectorPolygon]}
        return [
            spec("layers", self.IMAGES, "Image rasters (your own data)", images, **rasters, optional=True),
            spec("source", self.POLYGONS, "Label polygons", polygons, **polygon, optional=True),
            spec(
                "field", self.CLASS_FIELD, "Class field", field, parentLayerParameterName=self.POLYGONS, optional=True
            ),
            spec("enum", self.TASK, "Labels are for", task, options=TASKS, defaultValue=0),
            spec("source", self.AOI, "Area of interest", aoi, **polygon, optional=True),
        ]

    def _chips(self) -> list[Spec]:
        split = "Which split the chips of the raster layers belong to."
        potsdam = "Which Potsdam orthophoto folder to read: 2_Ortho_RGB, 3_Ortho_IRRG or 4_Ortho_RGBIR."
        connectivity = "Pixel connectivity of the blobs that become boxes (empty: the engine's default)."
        min_area = "Blobs smaller than this give no box (empty: the engine's default)."
        value_max = "Raw value that maps to 1.0 for 16-bit imagery, e.g. 4095 for 12-bit sensors."
        band_names = (
            "Names of the image bands in order, comma separated, e.g. 'nir,red,green' (empty: band1..bandN). "
            "They travel into the model and let 'Detect and segment' check its input."
        )
        chip_options, optional = self.engine_options().ChipOptions, ADVANCED_OPTIONAL
        return [
            spec("enum", self.SPLIT, "Split for the raster layers", split, options=SPLITS, defaultValue=0),
            self.option_spec("integer", self.SIZE, "Chip size (px)", chip_options, "size", minValue=16),
            self.option_spec("integer", self.STRIDE, "Stride (px)", chip_options, "stride", minValue=1),
            spec("enum", self.POTSDAM, "Potsdam bands", potsdam, options=POTSDAM_BANDS, defaultValue=0, **optional),
            spec(
                "enum",
                self.CONNECTIVITY,
                "Box connectivity",
                connectivity,
                options=[str(c) for c in CONNECTIVITY],
                **optional,
            ),
            spec("integer", self.MIN_AREA, "Minimum box area (px)", min_area, **optional, minValue=0),
            spec(
                "double", self.VALUE_MAX, "Value scaling maximum (uint16 imagery)", value_max, **optional, minValue=1.0
            ),
            spec("text", self.BAND_NAMES, "Band names (raster layers)", band_names, **optional),
        ]

    def _own_splits(self) -> list[Spec]:
        classes = "List of {name, value, colour}: value = class field value or class raster value."
        split_by = (
            "block: square blocks of twice the chip size; tile: whole rasters. Chips never share pixels across splits."
        )
        class_files = {"fileFilter": "YAML/JSON (*.yaml *.yml *.json)", **ADVANCED_OPTIONAL}
        share = {"minValue": 0.0, "maxValue": 0.9, "advanced": True}
        chip_options = self.engine_options().ChipOptions
        return [
            spec("file", self.CLASSES_FILE, "Class table (YAML/JSON)", classes, **class_files),
            self.option_spec("double", self.VAL_FRACTION, "Validation fraction", chip_options, "val_fraction", **share),
            spec("enum", self.SPLIT_BY, "Split by", split_by, options=SPLIT_BY, defaultValue=0, advanced=True),
            self.option_spec("integer", self.SEED, "Split seed", chip_options, "seed", advanced=True),
        ]

    def _output(self) -> list[Spec]:
        splits = "Tile name → split (train/val/test) replacing the standard ISPRS split (dataset folder only)."
        overwrite = "Without it, an output folder that already has files is refused."
        output = "Written with manifest.json last: an interrupted run never looks complete."
        return [
            spec(
                "file",
                self.SPLITS_FILE,
                "Split override (JSON)",
                splits,
                fileFilter="JSON (*.json)",
                **ADVANCED_OPTIONAL,
            ),
            spec(
                "boolean",
                self.OVERWRITE,
                "Overwrite an existing chip dataset",
                overwrite,
                defaultValue=False,
                advanced=True,
            ),
            spec("folder_out", self.OUTPUT, "Chip dataset folder", output),
        ]

    def check_values(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str | None:
        folder = not is_unset(parameters, self.INPUT_FOLDER)
        image = not is_unset(parameters, self.INPUT)
        label = not is_unset(parameters, self.LABEL)
        own = not is_unset(parameters, self.IMAGES) and bool(parameters.get(self.IMAGES))
        if own:
            if folder or image:
                return (
                    "'Image rasters' (your own data) go alone: leave 'ISPRS dataset folder' and 'Image raster' empty."
                )
            polygons = not is_unset(parameters, self.POLYGONS)
            task = TASKS[self.parameterAsEnum(parameters, self.TASK, context)]
            if task != "none" and polygons == label:
                return (
                    "Your own data: give exactly one of 'Label polygons' or 'Label raster' (a class raster) for "
                    f"task '{task}' (found {'both' if polygons else 'neither'})."
                )
            return None
        if folder == (image or label):
            return (
                "Give either 'ISPRS dataset folder' or 'Image raster' + 'Label raster', not both and not neither "
                f"(found folder={'set' if folder else 'empty'}, image={'set' if image else 'empty'})."
            )
        if image != label:
            return "'Image raster' and 'Label raster' go together: both are needed to chip raster layers."
        return None

    def process(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        chip = self.engine("engine.chip")
        out_dir = Path(self.parameterAsFileOutput(parameters, self.OUTPUT, context))
        connectivity = None
        if not is_unset(parameters, self.CONNECTIVITY):
            connectivity = CONNECTIVITY[self.parameterAsEnum(parameters, self.CONNECTIVITY, context)]
        options: dict[str, Any] = {
            "out_dir": out_dir,
            "size": self.parameterAsInt(parameters, self.SIZE, context),
            "stride": self.parameterAsInt(parameters, self.STRIDE, context),
            "overwrite": self.parameterAsBool(parameters, self.OVERWRITE, context),
            "connectivity": connectivity,  # None: the engine's defaults
            "min_area": self.optional_number(parameters, self.MIN_AREA, context, integer=True),
            "scale_max": self.optional_number(parameters, self.VALUE_MAX, context),
            "progress": self.progress(feedback),
        }
        root = self.optional_file(parameters, self.INPUT_FOLDER, context)
        if not is_unset(parameters, self.IMAGES) and parameters.get(self.IMAGES):
            self._chip_own_data(parameters, context, feedback, options)
        elif root is not None:
            dataset = DATASETS[self.parameterAsEnum(parameters, self.DATASET, context)]
            bands = None
            if dataset == "potsdam" and not is_unset(parameters, self.POTSDAM):
                bands = POTSDAM_BANDS[self.parameterAsEnum(parameters, self.POTSDAM, context)]
            splits = self.optional_file(parameters, self.SPLITS_FILE, context)
            self.call_engine(
                chip.chip_dataset, feedback, dataset=dataset, root=root, bands=bands, splits=splits, **options
            )
        else:
            tile = self._tile_spec(parameters, context)
            feedback.pushInfo(f"Chipping {tile.image} with labels {tile.label} into split '{tile.split}'")
            names = [] if is_unset(parameters, self.BAND_NAMES) else self._band_names(parameters, context)
            self.call_engine(chip.chip_tiles, feedback, tiles=[tile], band_names=names or None, **options)
        return {self.OUTPUT: str(out_dir)}

    def _band_names(self, parameters: dict[str, Any], context: QgsProcessingContext) -> list[str]:
        text = self.parameterAsString(parameters, self.BAND_NAMES, context)
        return [name.strip() for name in text.split(",") if name.strip()]

    def _chip_own_data(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
        options: dict[str, Any],
    ) -> None:
        userdata = self.engine("engine.chip.userdata")
        splits = self.engine("engine.chip.splits")
        layers = self.parameterAsLayerList(parameters, self.IMAGES, context)
        images = [raster_path(layer, "Image rasters") for layer in layers]
        task = TASKS[self.parameterAsEnum(parameters, self.TASK, context)]
        polygons = self.vector_path(parameters, self.POLYGONS, context, feedback)
        raster = raster_path(self.parameterAsRasterLayer(parameters, self.LABEL, context), "Label raster")
        field = self.parameterAsString(parameters, self.CLASS_FIELD, context) or None
        classes = self.parameterAsFile(parameters, self.CLASSES_FILE, context) or None
        labels = userdata.LabelSource(
            task, None if task == "none" else (polygons or raster), field if polygons else None, None, classes,
            self.vector_path(parameters, self.AOI, context, feedback),
        )  # fmt: skip
        size = options["size"]
        try:
            plan = splits.SplitPlan(
                SPLIT_BY[self.parameterAsEnum(parameters, self.SPLIT_BY, context)],
                self.parameterAsDouble(parameters, self.VAL_FRACTION, context), 0.0,
                self.parameterAsInt(parameters, self.SEED, context), 2 * size,
            )  # fmt: skip
        except self.engine("engine.core.errors").PmtlError as exc:
            raise QgsProcessingException(exc.render(self.param_words)) from exc
        feedback.pushInfo(f"Chipping {len(images)} raster(s) for task '{task}' with labels {labels.path}")
        # chip_images has plain defaults for connectivity / min_area: leave out what the user left empty
        options = {k: v for k, v in options.items() if k != "out_dir" and v is not None}
        out_dir = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        self.call_engine(
            userdata.chip_images, feedback, images=images, out_dir=out_dir, labels=labels, plan=plan, **options
        )
        self.keep_temporary_sources(Path(out_dir), {"source": labels.path, "aoi": labels.aoi}, feedback)

    def keep_temporary_sources(
        self, out_dir: Path, sources: dict[str, str | None], feedback: QgsProcessingFeedback
    ) -> None:
        """Copy label / AOI files that live in Processing's temporary folder (memory layers, selections, temporary
        outputs: gone when QGIS closes) into ``out_dir/labels``; the manifest's ``labels`` entries name the copies."""
        manifest_path = out_dir / "manifest.json"
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        changed = False
        for key, source in sources.items():
            path, _, layer = (source or "").partition("|")
            if not path or not is_temporary_output(path):
                continue
            (out_dir / "labels").mkdir(exist_ok=True)
            for part in Path(path).parent.glob(Path(path).stem + ".*"):  # a shapefile's sidecars too
                shutil.copy2(part, out_dir / "labels" / part.name)
            copy = str((out_dir / "labels" / Path(path).name).resolve()) + (f"|{layer}" if layer else "")
            manifest["labels"][key] = copy
            changed = True
            feedback.pushInfo(f"Labels from a temporary layer kept with the chips: {copy}")
        if changed:
            self.engine("engine.core.atomic").write_json_atomic(manifest_path, manifest)

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
