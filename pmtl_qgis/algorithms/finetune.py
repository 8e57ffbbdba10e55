"""pmtl:finetune: improve a model with the user's corrected layer (python -m engine.finetune in a child process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
)

from ..engine_process import ProcessResult
from .base import PmtlAlgorithm, is_unset, raster_path
from .params import ADVANCED_OPTIONAL, Spec, output, spec
from .train import runs_root

TASKS = ("det", "seg", "both")
MODEL_FILTER = "pmtl models (*.pt *.pth *.onnx);;All files (*.*)"


def option_default(name: str) -> Any:
    """The engine's default of a fine-tuning option (``engine.finetune.options``), or None without an engine."""
    try:
        from ..scope import import_engine

        options = import_engine("engine.finetune.options")
    except ImportError:
        return None
    return options.FinetuneOptions.__dataclass_fields__[name].default


def finetune_arguments(values: dict[str, Any]) -> list[str]:
    """The ``python -m engine.finetune`` arguments for the given option values (None = the engine's default)."""
    arguments: list[str] = []
    for name, value in values.items():
        if value is None:
            continue
        flag = "--image" if name == "images" else "--" + name.replace("_", "-")
        arguments += [flag, str(value)]
    return arguments


class Finetune(PmtlAlgorithm):
    ALG_ID = "finetune"
    DISPLAY_NAME = "Improve a model with corrected labels"
    GROUP_ID = "model"
    REQUIRED_MODULES = ("torch", "torchvision", "onnx", "osgeo.gdal")
    ENGINE_PARAMS: ClassVar[dict[str, str]] = {"scale_max": "VALUE_MAX", "image": "INPUT"}
    HELP = (
        "Fine-tunes a pmtl model on labels you corrected: run 'Detect and segment', edit its Detections layer "
        "(delete false boxes, draw missed ones, change classes in the class field), save the edits, then run this "
        "with the same raster. The model starts from its checkpoint (the best.pt, or the .onnx whose metadata names "
        "it): its encoder is kept, classes with the same name keep their weights and new classes start fresh. The "
        "labels are chipped at the model's GSD and the model trains for a few minutes (short schedule, first layers "
        "frozen) in a separate Python process; the bar moves and Cancel stops it.\n\n"
        "Where labels count: inside the Area of interest or, without one, inside the extent of the labels. Inside "
        "it every object must be labelled: an object without a box is taught as background. Outside it nothing is.\n\n"
        "Output folder: model.onnx (ready for 'Detect and segment'), best.pt, finetune.json with the scores before "
        "and after on a held-out part of the labelled area (also in the log).\n\n"
        "Example (qgis_process): qgis_process run pmtl:finetune -- INPUT=/data/ortho.tif "
        "LABELS=/data/detections.gpkg CLASS_FIELD=class MODEL=/models/model.onnx STEPS=150 OUTPUT=/runs/improved"
    )

    def parameters(self) -> list[Spec]:
        labels = "Polygons or boxes of the objects, typically the edited Detections layer of 'Detect and segment'."
        field = (
            "Attribute with each object's class name (the Detections layer's 'class'); empty: one class, the "
            "model's first detection class."
        )
        model = "A pmtl checkpoint (best.pt) or an exported model (.onnx) whose metadata names its checkpoint."
        steps = "Optimizer steps; more steps take longer (a few minutes on 2 CPU cores for the default)."
        task = "det: boxes for the detection head; seg: polygons as a class mask; both."
        aoi = "Where the labels are complete (default: the extent of the labels)."
        size = "Chip side at the model's GSD (empty: the model's training chip size)."
        value_max = "Raw value that maps to 1.0 for 16-bit or float rasters, e.g. 4095 for 12-bit sensors."
        folder = "Receives model.onnx, best.pt, finetune.json and the chips. Must not hold an earlier run."
        polygons, default_steps = {"types": [QgsProcessing.TypeVectorPolygon]}, option_default("steps")
        return [
            spec("raster", "INPUT", "Raster", "The orthophoto the labels are on."),
            spec("source", "LABELS", "Corrected labels", labels, **polygons),
            spec(
                "field",
                "CLASS_FIELD",
                "Class field",
                field,
                parentLayerParameterName="LABELS",
                optional=True,
                defaultValue="class",
            ),
            spec("file", "MODEL", "Model to improve", model, fileFilter=MODEL_FILTER),
            spec("integer", "STEPS", "Training steps", steps, minValue=1, defaultValue=default_steps, optional=True),
            spec("enum", "TASK", "Labels are for", task, options=TASKS, defaultValue=0),
            spec("source", "AOI", "Area of interest", aoi, **polygons, optional=True),
            spec("integer", "SIZE", "Chip size (px)", size, minValue=32, **ADVANCED_OPTIONAL),
            spec("double", "VALUE_MAX", "Value scaling maximum", value_max, minValue=1.0, **ADVANCED_OPTIONAL),
            self.device_spec("auto: CUDA when PyTorch sees a GPU, else the CPU."),
            spec("folder_out", "OUTPUT", "Output folder", folder, defaultValue=str(runs_root() / "finetune")),
            output("file", "OUTPUT_MODEL", "Improved model (model.onnx)"),
            output("file", "CHECKPOINT", "Improved checkpoint (best.pt)"),
            output("string", "SCORES", "Scores before / after (JSON)"),
        ]

    def check_values(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str | None:
        out_dir = Path(self.parameterAsFileOutput(parameters, "OUTPUT", context))
        if (out_dir / "last.pt").exists():
            return f"Output folder: {out_dir} already holds a fine-tuning run; choose another folder."
        return None

    def option_values(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        """The engine options the parameters give (None: the engine's default)."""
        model = self.existing_path(self.parameterAsFile(parameters, "MODEL", context), "Model to improve")
        field = (
            None if is_unset(parameters, "CLASS_FIELD") else self.parameterAsString(parameters, "CLASS_FIELD", context)
        )
        device = self.device(parameters, context)
        return {
            "checkpoint": str(model.resolve()),
            "images": raster_path(self.parameterAsRasterLayer(parameters, "INPUT", context), "Raster"),
            "labels": self.vector_path(parameters, "LABELS", context, feedback),
            "class_field": field or None,
            "task": TASKS[self.parameterAsEnum(parameters, "TASK", context)],
            "aoi": self.vector_path(parameters, "AOI", context, feedback),
            "steps": self.optional_number(parameters, "STEPS", context, integer=True),
            "size": self.optional_number(parameters, "SIZE", context, integer=True),
            "scale_max": self.optional_number(parameters, "VALUE_MAX", context),
            "device": None if device == "auto" else device,
            "out": str(Path(self.parameterAsFileOutput(parameters, "OUTPUT", context)).resolve()),
        }

    def process(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        values = self.option_values(parameters, context, feedback)
        result = self.run_engine("engine.finetune", finetune_arguments(values), feedback)
        self.check_engine_result(result)
        return self._results(result, Path(values["out"]), feedback)

    def _results(self, result: ProcessResult, out_dir: Path, feedback: QgsProcessingFeedback) -> dict[str, Any]:
        done = result.last_event("done") or {}
        model, checkpoint = out_dir / "model.onnx", out_dir / "best.pt"
        if not model.is_file():
            raise QgsProcessingException(f"Fine-tuning ended but wrote no model in {out_dir}.")
        scores = {"before": done.get("before", {}), "after": done.get("after", {})}
        for key in ("det_ap50", "seg_miou"):
            if key in scores["after"]:
                before = scores["before"].get(key, 0.0)
                feedback.pushInfo(
                    f"{key} on the held-out labels: {before:.3f} before, {scores['after'][key]:.3f} after"
                )
        return {
            "OUTPUT": str(out_dir),
            "OUTPUT_MODEL": str(model),
            "CHECKPOINT": str(checkpoint),
            "SCORES": json.dumps(scores),
        }
