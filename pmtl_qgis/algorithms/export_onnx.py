"""pmtl:export_onnx: a training checkpoint → an ONNX model with pmtl (and Deepness-compatible) metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
)

from .base import PmtlAlgorithm
from .params import ADVANCED_OPTIONAL, Spec, spec
from .train import CHECKPOINT_FILTER

VARIANTS = ("full", "deepness")
PRECISIONS = ("fp32", "int8", "fp16")
OUTPUT_HELP = "The .onnx file for 'Detect and segment' (or the Deepness plugin)."


class ExportOnnx(PmtlAlgorithm):
    ALG_ID = "export_onnx"
    DISPLAY_NAME = "Export a checkpoint to ONNX"
    GROUP_ID = "model"
    REQUIRED_MODULES = ("torch", "onnx")
    HELP = (
        "Exports the network of a training checkpoint (both heads, dynamic batch) to an ONNX file that "
        "'Detect and segment' runs with onnxruntime, without PyTorch. The file carries versioned metadata: "
        "classes and colours, input bands and value scaling, normalisation, ground sampling distance, tile size, "
        "recommended overlap, detection thresholds and provenance (datasets, distillation, validation metrics); "
        "also the keys the Deepness plugin reads. Runs in a separate Python process (python -m engine.export); "
        "Cancel stops it without leaving a partial file.\n\n"
        "Precision: fp32; int8 (about 3x faster on CPUs, a quarter of the size; calibrated on the training chip "
        "datasets the checkpoint records, its accuracy cost against fp32 on their validation chips is stored in the "
        "metadata); fp16 for GPUs (CUDA).\n\n"
        "Example (qgis_process): qgis_process run pmtl:export_onnx -- CHECKPOINT=/runs/student/best.pt "
        "OUTPUT=/models/student.onnx"
    )

    def parameters(self) -> list[Spec]:
        checkpoint, output = "best.pt or last.pt written by 'Train'.", "ONNX models (*.onnx)"
        tile, overlap = "Inference tile side (empty: the chip size).", "Stored for inference (empty: engine)."
        opset = "Empty: the engine's default (≥ 18)."
        score = "Detections below it are dropped at inference (empty: the engine's default)."
        variant = (
            "full: class map + detections (pmtl); deepness: the segmentation output as the Deepness plugin expects it."
        )
        precision = (
            "fp32; int8: quantized for CPUs, calibrated on the checkpoint's training chips; fp16: for CUDA GPUs."
        )
        optional, scores = ADVANCED_OPTIONAL, {**ADVANCED_OPTIONAL, "minValue": 0.0}
        return [
            spec("file", "CHECKPOINT", "Checkpoint", checkpoint, fileFilter=CHECKPOINT_FILTER),
            spec("integer", "TILE_SIZE", "Tile size (px)", tile, **optional, minValue=16, engine="--tile-size"),
            spec("integer", "OVERLAP", "Recommended overlap (px)", overlap, **optional, minValue=0, engine="--overlap"),
            spec("double", "SCORE_THRESHOLD", "Detection score threshold", score, **scores, engine="--score-thresh"),
            spec("enum", "VARIANT", "Graph outputs", variant, options=VARIANTS, defaultValue=0, advanced=True),
            spec("enum", "PRECISION", "Precision", precision, options=PRECISIONS, defaultValue=0),
            spec("integer", "OPSET", "ONNX opset", opset, **optional, minValue=18, engine="--opset"),
            spec("file_out", "OUTPUT", "ONNX model", OUTPUT_HELP, fileFilter=output),
        ]

    def arguments(self, parameters: dict[str, Any], context: QgsProcessingContext, out_path: Path) -> list[str]:
        """The ``python -m engine.export`` arguments for these parameters."""
        checkpoint = self.existing_path(self.parameterAsFile(parameters, "CHECKPOINT", context), "Checkpoint")
        arguments = ["--checkpoint", str(checkpoint), "--out", str(out_path)]
        arguments += ["--variant", VARIANTS[self.parameterAsEnum(parameters, "VARIANT", context)]]
        arguments += ["--precision", PRECISIONS[self.parameterAsEnum(parameters, "PRECISION", context)]]
        return arguments + self.number_flags(parameters, context)

    def process(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        out_path = Path(self.parameterAsFileOutput(parameters, "OUTPUT", context))
        result = self.run_engine("engine.export", self.arguments(parameters, context, out_path), feedback)
        self.check_engine_result(result)
        if not out_path.is_file():
            raise QgsProcessingException(f"Export ended without writing {out_path}:\n{result.error_text()}")
        return {"OUTPUT": str(out_path)}
