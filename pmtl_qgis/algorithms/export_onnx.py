"""pmtl:export_onnx: a training checkpoint → an ONNX model with pmtl (and Deepness-compatible) metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
)

from .base import PmtlAlgorithm, advanced, with_help
from .train import CHECKPOINT_FILTER

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
        "also the keys the Deepness plugin reads.\n\n"
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

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        self.addParameter(
            with_help(
                QgsProcessingParameterFile(self.CHECKPOINT, self.tr("Checkpoint"), fileFilter=CHECKPOINT_FILTER),
                "best.pt or last.pt written by 'Train'.",
            )
        )
        number = QgsProcessingParameterNumber
        for name, label, kind, minimum, text in (
            (self.TILE_SIZE, "Tile size (px)", number.Integer, 16, "Inference tile side (empty: the chip size)."),
            (self.OVERLAP, "Recommended overlap (px)", number.Integer, 0, "Stored for inference (empty: engine)."),
            (
                self.SCORE_THRESHOLD,
                "Detection score threshold",
                number.Double,
                0.0,
                "Detections below it are dropped at inference (empty: the engine's default).",
            ),
        ):
            self.addParameter(advanced(with_help(number(name, self.tr(label), kind, None, True, minimum), text)))
        self.addParameter(
            advanced(
                with_help(
                    QgsProcessingParameterEnum(self.VARIANT, self.tr("Graph outputs"), list(VARIANTS), defaultValue=0),
                    "full: class map + detections (pmtl); deepness: the segmentation output as the Deepness "
                    "plugin expects it.",
                )
            )
        )
        self.addParameter(
            with_help(
                QgsProcessingParameterEnum(self.PRECISION, self.tr("Precision"), list(PRECISIONS), defaultValue=0),
                "fp32; int8: quantized for CPUs, calibrated on the checkpoint's training chips; fp16: for CUDA GPUs.",
            )
        )
        self.addParameter(
            advanced(
                with_help(
                    QgsProcessingParameterNumber(
                        self.OPSET, self.tr("ONNX opset"), QgsProcessingParameterNumber.Integer, None, True, 18
                    ),
                    "Empty: the engine's default (≥ 18).",
                )
            )
        )
        self.addParameter(
            with_help(
                QgsProcessingParameterFileDestination(
                    self.OUTPUT, self.tr("ONNX model"), fileFilter="ONNX models (*.onnx)"
                ),
                "The .onnx file for 'Detect and segment' (or the Deepness plugin).",
            )
        )

    def processAlgorithm(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        export = self.engine("engine.export")
        checkpoint = self.existing_path(self.parameterAsFile(parameters, self.CHECKPOINT, context), "Checkpoint")
        out_path = Path(self.parameterAsFileOutput(parameters, self.OUTPUT, context))
        self.call_engine(
            export.export_checkpoint,
            feedback,
            ckpt_path=checkpoint,
            out_path=out_path,
            tile_size=self.optional_number(parameters, self.TILE_SIZE, context, integer=True),
            overlap=self.optional_number(parameters, self.OVERLAP, context, integer=True),
            score_thresh=self.optional_number(parameters, self.SCORE_THRESHOLD, context),
            variant=VARIANTS[self.parameterAsEnum(parameters, self.VARIANT, context)],
            opset=self.optional_number(parameters, self.OPSET, context, integer=True),
            precision=PRECISIONS[self.parameterAsEnum(parameters, self.PRECISION, context)],
        )
        return {self.OUTPUT: str(out_path)}
