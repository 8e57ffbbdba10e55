"""pmtl:detect_segment_region: many raster layers or a folder + ONNX model → a region job on Dask (engine.region in
the engine process) → classes.vrt + detections.gpkg, loaded styled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
)

from ..styling import style_on_load
from .base import PmtlAlgorithm, is_unset
from .params import ADVANCED_OPTIONAL, Spec, output, spec


class DetectSegmentRegion(PmtlAlgorithm):
    ALG_ID = "detect_segment_region"
    DISPLAY_NAME = "Detect and segment a region (many rasters, Dask)"
    GROUP_ID = "inference"
    REQUIRED_MODULES = ("onnxruntime", "numpy", "osgeo.gdal", "distributed")
    HELP = (
        "Runs an ONNX model exported by pmtl over many orthophotos at once (a town, a county): the raster layers "
        "chosen and/or every raster of a folder. One task per raster on Dask: local worker processes by default, "
        "or the workers of a running Dask scheduler (Scheduler address, e.g. tcp://10.0.0.5:8786; the workers need "
        "the pmtl engine installed and must reach the model and rasters by the same paths).\n\n"
        "Writes into the output folder a Cloud-Optimised GeoTIFF class map per input (classes/), classes.vrt over "
        "them, detections.gpkg (fields class, class_id, score, source; objects cut by the border between two "
        "adjacent rasters joined) and region.json (status and time of each raster). A raster that cannot be read "
        "fails alone; Resume skips the rasters a previous run finished. Runs in a separate Python process "
        "(python -m engine.region); Cancel stops it and keeps the finished rasters.\n\n"
        "Example (qgis_process): qgis_process run pmtl:detect_segment_region -- FOLDER=/data/orthos "
        "MODEL=/models/student.onnx WORKERS=2 OUTPUT=/out/region"
    )

    def parameters(self) -> list[Spec]:
        inputs = "Raster layers read from files (GDAL); with the folder below, or alone."
        folder = "Every .tif / .tiff / .vrt / .jp2 / .img raster in this folder."
        scheduler = "Join a running Dask cluster (e.g. tcp://10.0.0.5:8786) instead of starting local workers."
        resume = "Skip the rasters that a previous run into the same folder finished (region.json)."
        bands = "Raster band numbers in the model's band order, e.g. 4,1,2; empty: the bands as they are."
        threads, score = "onnxruntime threads (empty: cores/workers).", "Empty: the model's own, per class."
        value_max, gsd = (
            "Raw value that maps to 1.0 (empty: the model's).",
            "Refuse rasters further from the model's GSD.",
        )
        destination = "classes/, classes.vrt, detections.gpkg and region.json are written here."
        workers, optional = self.engine_options().WorkerOptions, ADVANCED_OPTIONAL
        counts, scores, ratios = ({**optional, "minValue": low} for low in (1, 0.0, 1.0))
        return [
            spec("layers", "INPUTS", "Input rasters", inputs, layerType=QgsProcessing.TypeRaster, optional=True),
            spec("folder", "FOLDER", "Folder of rasters", folder, optional=True),
            self.onnx_model_spec("MODEL"),
            self.option_spec("integer", "WORKERS", "Local workers", workers, "workers", minValue=1),
            spec("text", "SCHEDULER", "Dask scheduler address", scheduler, **optional),
            spec("boolean", "RESUME", "Resume", resume, defaultValue=False),
            spec("text", "BANDS", "Bands (model order)", bands, **optional),
            spec(
                "integer", "THREADS_PER_WORKER", "Threads per worker", threads, **counts, engine="--threads-per-worker"
            ),
            spec("double", "SCORE_THRESHOLD", "Detection score threshold", score, **scores, engine="--score-thresh"),
            spec("double", "VALUE_MAX", "Input value maximum", value_max, **ratios, engine="--value-max"),
            spec("double", "MAX_GSD_RATIO", "Largest GSD ratio", gsd, **ratios, engine="--max-gsd-ratio"),
            self.device_spec("auto: CUDA when onnxruntime has it, else the CPU."),
            spec("folder_out", "OUTPUT", "Output folder", destination),
            output("raster", "CLASSES", "Class map (VRT over every raster)"),
            output("vector", "DETECTIONS", "Detections"),
            output("file", "REPORT", "Region report (region.json)"),
        ]

    def check_values(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str | None:
        if is_unset(parameters, "INPUTS") and is_unset(parameters, "FOLDER"):
            return "Give input raster layers, a folder of rasters, or both (found neither)."
        return None

    def input_paths(self, parameters: dict[str, Any], context: QgsProcessingContext) -> list[str]:
        """The rasters as the engine opens them: each layer's file, and the folder."""
        paths = []
        unset = is_unset(parameters, "INPUTS")
        layers = [] if unset else self.parameterAsLayerList(parameters, "INPUTS", context)
        for layer in layers:
            source = layer.source().split("|", 1)[0]
            if layer.providerType() != "gdal" or not Path(source).is_file():
                raise QgsProcessingException(
                    f"Input rasters: '{layer.name()}' is not a raster file ({layer.providerType()} layer); "
                    "use 'Detect and segment' for web and virtual layers"
                )
            paths.append(source)
        folder = self.optional_file(parameters, "FOLDER", context)
        return paths + ([str(folder)] if folder is not None else [])

    def arguments(self, parameters: dict[str, Any], context: QgsProcessingContext, out_dir: str) -> list[str]:
        """The ``python -m engine.region`` arguments for these parameters (what the tests compare)."""
        model = self.existing_path(self.parameterAsFile(parameters, "MODEL", context), "ONNX model")
        arguments = ["--model", str(model)]
        for path in self.input_paths(parameters, context):
            arguments += ["--input", path]
        arguments += ["--out", out_dir, "--device", self.device(parameters, context)]
        if is_unset(parameters, "SCHEDULER"):
            arguments += ["--workers", str(self.parameterAsInt(parameters, "WORKERS", context))]
        else:
            arguments += ["--scheduler", self.parameterAsString(parameters, "SCHEDULER", context).strip()]
        if self.parameterAsBool(parameters, "RESUME", context):
            arguments.append("--resume")
        if not is_unset(parameters, "BANDS"):
            arguments += ["--bands", self.parameterAsString(parameters, "BANDS", context).replace(" ", "")]
        return arguments + self.number_flags(parameters, context)

    def process(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        out_dir = self.parameterAsString(parameters, "OUTPUT", context)
        result = self.run_engine("engine.region", self.arguments(parameters, context, out_dir), feedback)
        done = result.last_event("done")
        if result.canceled:
            raise QgsProcessingException(
                f"{self.displayName()} was cancelled; the rasters it finished are kept in {out_dir} (Resume goes on)."
            )
        if done is None:
            self.check_engine_result(result)
            raise QgsProcessingException(f"The region job ended without a result:\n{result.error_text()}")
        for source, error in (done.get("failures") or {}).items():
            feedback.reportError(f"{source}: {error}")
        feedback.pushInfo(f"Summary: {json.dumps(done, default=str)}")
        outputs = done.get("outputs") or {}
        results: dict[str, Any] = {"REPORT": outputs.get("report")}
        for name, key, kind, title in (
            ("CLASSES", "classes", "class_raster", "Region classes"),
            ("DETECTIONS", "detections", "detections", "Region detections"),
        ):
            path = outputs.get(key)
            results[name] = path
            if path:
                details = QgsProcessingContext.LayerDetails(title, context.project(), name)
                context.addLayerToLoadOnCompletion(path, details)
                style_on_load(context, path, kind)
        return results
