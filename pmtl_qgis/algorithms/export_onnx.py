"""pmtl:export_onnx: a training checkpoint → an ONNX model with pmtl (and Deepness-compatible) metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
)

from .base import PmtlAlgorithm
from .train import CHECKPOINT_FILTER, DOUBLE, INTEGER

VARIANTS = ("full", "deepness")
PRECISIONS = ("fp32", "int8", "fp16")


class ExportOnnx(PmtlAlgorithm):
    ALG_ID = "export_onnx"
    DISPLAY_NAME = "Export a checkpoint to ONNX"
    GROUP_ID = "model"
    GROUP_NAME = "Model"
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

    CHECKPOINT = "CHECKPOINT"
    TILE_SIZE = "TILE_SIZE"
    OVERLAP = "OVERLAP"
    SCORE_THRESHOLD = "SCORE_THRESHOLD"
    VARIANT = "VARIANT"
    PRECISION = "PRECISION"
    OPSET = "OPSET"
    OUTPUT = "OUTPUT"

    OPTIONS = (
        (TILE_SIZE, "--tile-size", True),
        (OVERLAP, "--overlap", True),
        (SCORE_THRESHOLD, "--score-thresh", False),
        (OPSET, "--opset", True),
    )
    """Optional numbers and the engine.export flag each one sets (left out when empty: the engine's default)."""

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        number = QgsProcessingParameterNumber
        self.param(
            QgsProcessingParameterFile,
            self.CHECKPOINT,
            "Checkpoint",
            fileFilter=CHECKPOINT_FILTER,
            help="best.pt or last.pt written by 'Train'.",
        )
        for name, label, kind, minimum, text in (
            (self.TILE_SIZE, "Tile size (px)", INTEGER, 16, "Inference tile side (empty: the chip size)."),
            (self.OVERLAP, "Recommended overlap (px)", INTEGER, 0, "Stored for inference (empty: engine)."),
            (
                self.SCORE_THRESHOLD,
                "Detection score threshold",
                DOUBLE,
                0.0,
                "Detections below it are dropped at inference (empty: the engine's default).",
            ),
        ):
            self.param(number, name, label, type=kind, optional=True, minValue=minimum, advanced=True, help=text)
        self.param(
            QgsProcessingParameterEnum,
            self.VARIANT,
            "Graph outputs",
            options=list(VARIANTS),
            defaultValue=0,
            advanced=True,
            help="full: class map + detections (pmtl); deepness: the segmentation output as the Deepness plugin "
            "expects it.",
        )
        self.param(
            QgsProcessingParameterEnum,
            self.PRECISION,
            "Precision",
            options=list(PRECISIONS),
            defaultValue=0,
            help="fp32; int8: quantized for CPUs, calibrated on the checkpoint's training chips; fp16: for CUDA GPUs.",
        )
        self.param(
            number,
            self.OPSET,
            "ONNX opset",
            type=INTEGER,
            optional=True,
            minValue=18,
            advanced=True,
            help="Empty: the engine's default (≥ 18).",
        )
        self.param(
            QgsProcessingParameterFileDestination,
            self.OUTPUT,
            "ONNX model",
            fileFilter="ONNX models (*.onnx)",
            help="The .onnx file for 'Detect and segment' (or the Deepness plugin).",
        )

    def arguments(self, parameters: dict[str, Any], context: QgsProcessingContext, out_path: Path) -> list[str]:
        """The ``python -m engine.export`` arguments for these parameters."""
        checkpoint = self.existing_path(self.parameterAsFile(parameters, self.CHECKPOINT, context), "Checkpoint")
        arguments = ["--checkpoint", str(checkpoint), "--out", str(out_path)]
        arguments += ["--variant", VARIANTS[self.parameterAsEnum(parameters, self.VARIANT, context)]]
        arguments += ["--precision", PRECISIONS[self.parameterAsEnum(parameters, self.PRECISION, context)]]
        return arguments + self.number_flags(parameters, context, self.OPTIONS)

    def process(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        out_path = Path(self.parameterAsFileOutput(parameters, self.OUTPUT, context))
        result = self.run_engine("engine.export", self.arguments(parameters, context, out_path), feedback)
        self.check_engine_result(result)
        if not out_path.is_file():
            raise QgsProcessingException(f"Export ended without writing {out_path}:\n{result.error_text()}")
        return {self.OUTPUT: str(out_path)}
