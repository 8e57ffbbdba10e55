"""What the chip algorithms share (one algorithm per data kind: chip_isprs, chip_isprs_raster, chip_own_labels,
chip_unlabelled): chip size and stride (defaults from ``engine.core.options.ChipOptions``), how blobs become boxes,
value scaling, overwrite and the output folder; for the algorithms that chip your own rasters, the split into
train/val and the area of interest."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from qgis.core import QgsProcessing, QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback

from ..layer_reader import is_temporary_output
from .base import PmtlAlgorithm, is_unset, raster_path
from .params import ADVANCED_OPTIONAL, Spec, spec

CONNECTIVITY = (4, 8)
SPLIT_BY = ("block", "tile")
POLYGON_LAYERS = {"types": [QgsProcessing.TypeVectorPolygon]}


class ChipAlgorithm(PmtlAlgorithm):
    """A chip algorithm: its own inputs (:meth:`inputs`), the shared chip parameters, then the output folder. It runs
    the engine function :meth:`engine_call` names with the shared options of :meth:`chip_options`."""

    GROUP_ID = "data"
    REQUIRED_MODULES = ("numpy", "osgeo.gdal")
    ENGINE_PARAMS: ClassVar[dict[str, str]] = {"scale_max": "VALUE_MAX"}
    MAKES_BOXES = True
    """Whether its chips get detection boxes (the box parameters are shown)."""

    def parameters(self) -> list[Spec]:
        return [*self.inputs(), *self._chip_specs(), *self._box_specs(), *self.extra(), *self._output_specs()]

    def inputs(self) -> list[Spec]:
        """The data this kind chips (first in the dialog)."""
        return []

    def extra(self) -> list[Spec]:
        """Parameters of this kind after the shared ones (splits, band names …)."""
        return []

    def _chip_specs(self) -> list[Spec]:
        value_max = "Raw value that maps to 1.0 for 16-bit imagery, e.g. 4095 for 12-bit sensors."
        chip_options, scale = self.engine_options().ChipOptions, {**ADVANCED_OPTIONAL, "minValue": 1.0}
        return [
            self.option_spec("integer", "SIZE", "Chip size (px)", chip_options, "size", minValue=16),
            self.option_spec("integer", "STRIDE", "Stride (px)", chip_options, "stride", minValue=1),
            spec("double", "VALUE_MAX", "Value scaling maximum (uint16 imagery)", value_max, **scale),
        ]

    def _box_specs(self) -> list[Spec]:
        if not self.MAKES_BOXES:
            return []
        connectivity = "Pixel connectivity of the blobs that become boxes (empty: the engine's default)."
        min_area = "Blobs smaller than this give no box (empty: the engine's default)."
        choices = [str(c) for c in CONNECTIVITY]
        return [
            spec("enum", "CONNECTIVITY", "Box connectivity", connectivity, options=choices, **ADVANCED_OPTIONAL),
            spec("integer", "MIN_AREA", "Minimum box area (px)", min_area, **ADVANCED_OPTIONAL, minValue=0),
        ]

    def _output_specs(self) -> list[Spec]:
        folder = "Written with manifest.json last: an interrupted run never looks complete."
        return [
            self.overwrite_spec("Overwrite an existing chip dataset"),
            spec("folder_out", "OUTPUT", "Chip dataset folder", folder),
        ]

    def process(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        out_dir = Path(self.parameterAsFileOutput(parameters, "OUTPUT", context))
        function, arguments = self.engine_call(parameters, context, feedback)
        options = {**self.chip_options(parameters, context), "progress": self.progress(feedback)}
        self.call_engine(function, feedback, out_dir=out_dir, **arguments, **options)
        self.finish(out_dir, arguments, feedback)
        return {"OUTPUT": str(out_dir)}

    def chip_options(self, parameters: dict[str, Any], context: QgsProcessingContext) -> dict[str, Any]:
        """The engine's keyword arguments for the shared parameters (None: the engine's default; no progress)."""
        connectivity = None
        if not is_unset(parameters, "CONNECTIVITY"):
            connectivity = CONNECTIVITY[self.parameterAsEnum(parameters, "CONNECTIVITY", context)]
        return {
            "size": self.parameterAsInt(parameters, "SIZE", context),
            "stride": self.parameterAsInt(parameters, "STRIDE", context),
            "overwrite": self.parameterAsBool(parameters, "OVERWRITE", context),
            "connectivity": connectivity,
            "min_area": self.optional_number(parameters, "MIN_AREA", context, integer=True),
            "scale_max": self.optional_number(parameters, "VALUE_MAX", context),
        }

    def engine_call(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> tuple[Callable[..., Any], dict[str, Any]]:
        """The engine function that chips this kind and its own keyword arguments (besides out_dir, progress and
        :meth:`chip_options`)."""
        raise NotImplementedError

    def finish(self, out_dir: Path, arguments: dict[str, Any], feedback: QgsProcessingFeedback) -> None:
        """After the engine wrote the chips into ``out_dir`` (``arguments``: those of :meth:`engine_call`)."""


class ImageChipAlgorithm(ChipAlgorithm):
    """Chips your own rasters (``engine.chip.userdata.chip_images``): image layers, an area of interest and a split
    of the chips into train/val by blocks or by raster."""

    ENGINE_PARAMS: ClassVar[dict[str, str]] = {"scale_max": "VALUE_MAX", "image": "IMAGES", "labels": "POLYGONS"}
    IMAGES_HELP = "Your orthophotos (1 to N bands, same bands in each)."
    VAL_FRACTION = "val_fraction"
    """The ChipOptions field whose default and help the 'Validation fraction' parameter shows."""

    def image_specs(self) -> list[Spec]:
        """The image layers (first in the dialog)."""
        rasters = {"layerType": QgsProcessing.TypeRaster}
        return [spec("layers", "IMAGES", "Image rasters", self.IMAGES_HELP, **rasters)]

    def aoi_spec(self, help: str) -> Spec:
        """The optional area of interest polygon layer."""
        return spec("source", "AOI", "Area of interest", help, **POLYGON_LAYERS, optional=True)

    def extra(self) -> list[Spec]:
        split_by = (
            "block: square blocks of twice the chip size; tile: whole rasters. Chips never share pixels across splits."
        )
        share = {"minValue": 0.0, "maxValue": 0.9, "advanced": True}
        chip_options = self.engine_options().ChipOptions
        return [
            self.option_spec("double", "VAL_FRACTION", "Validation fraction", chip_options, self.VAL_FRACTION, **share),
            spec("enum", "SPLIT_BY", "Split by", split_by, options=SPLIT_BY, defaultValue=0, advanced=True),
            self.option_spec("integer", "SEED", "Split seed", chip_options, "seed", advanced=True),
        ]

    def label_source(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> Any:
        """The engine's ``LabelSource`` for this kind (with the area of interest)."""
        raise NotImplementedError

    def engine_call(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> tuple[Callable[..., Any], dict[str, Any]]:
        layers = self.parameterAsLayerList(parameters, "IMAGES", context)
        images = [raster_path(layer, "Image rasters") for layer in layers]
        labels = self.label_source(parameters, context, feedback)
        plan = self._split_plan(parameters, context, self.parameterAsInt(parameters, "SIZE", context))
        feedback.pushInfo(f"Chipping {len(images)} raster(s) for task '{labels.task}' with labels {labels.path}")
        return self.engine("engine.chip.userdata").chip_images, {"images": images, "labels": labels, "plan": plan}

    def chip_options(self, parameters: dict[str, Any], context: QgsProcessingContext) -> dict[str, Any]:
        """chip_images has plain defaults for connectivity / min_area: what the user left empty is left out."""
        return {k: v for k, v in super().chip_options(parameters, context).items() if v is not None}

    def finish(self, out_dir: Path, arguments: dict[str, Any], feedback: QgsProcessingFeedback) -> None:
        labels = arguments["labels"]
        self.keep_temporary_sources(out_dir, {"source": labels.path, "aoi": labels.aoi}, feedback)

    def _split_plan(self, parameters: dict[str, Any], context: QgsProcessingContext, size: int) -> Any:
        splits = self.engine("engine.chip.splits")
        try:
            return splits.SplitPlan(
                SPLIT_BY[self.parameterAsEnum(parameters, "SPLIT_BY", context)],
                self.parameterAsDouble(parameters, "VAL_FRACTION", context), 0.0,
                self.parameterAsInt(parameters, "SEED", context), 2 * size,
            )  # fmt: skip
        except self.engine("engine.core.errors").PmtlError as exc:
            raise QgsProcessingException(exc.render(self.param_words)) from exc

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
