"""pmtl:evaluate: a checkpoint on chip datasets → detection mAP / segmentation mIoU report (JSON) + numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from .base import DEVICES, PmtlAlgorithm, advanced, is_unset, with_help
from .train import CHECKPOINT_FILTER

NUMBERS = (
    ("DET_MAP", "det_map", "Detection mAP@[.5:.95]"),
    ("DET_AP50", "det_ap50", "Detection AP50"),
    ("SEG_MIOU", "seg_miou", "Segmentation mIoU"),
    ("SEG_OA", "seg_oa", "Segmentation overall accuracy"),
)
"""Scalar outputs: (output name, engine metric key, description)."""


class Evaluate(PmtlAlgorithm):
    ALG_ID = "evaluate"
    DISPLAY_NAME = "Evaluate a checkpoint"
    GROUP_ID = "model"
    GROUP_NAME = "Model"
    REQUIRED_MODULES = ("torch", "torchvision")
    HELP = (
        "Measures a trained network on a split of chip datasets: detection mean average precision over IoU "
        "0.50:0.05:0.95 (all-point interpolation, VOC2010+) and AP50 per class on the detection dataset; "
        "segmentation IoU per class, mIoU, overall accuracy and F1 on the eroded (noBoundary) masks of the "
        "segmentation dataset. Writes the full report as JSON and returns the headline numbers, so a model "
        "can compare runs.\n\n"
        "Example (qgis_process): qgis_process run pmtl:evaluate -- CHECKPOINT=/runs/student/best.pt "
        "DET_DATA=/data/chips_potsdam SEG_DATA=/data/chips_vaihingen SPLIT=val OUTPUT=/runs/student/eval.json"
    )

    CHECKPOINT = "CHECKPOINT"
    DET_DATA = "DET_DATA"
    SEG_DATA = "SEG_DATA"
    SPLIT = "SPLIT"
    DEVICE = "DEVICE"
    BATCH_SIZE = "BATCH_SIZE"
    MAX_CHIPS = "MAX_CHIPS"
    OUTPUT = "OUTPUT"

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        folder = QgsProcessingParameterFile.Folder
        self.addParameter(
            with_help(
                QgsProcessingParameterFile(self.CHECKPOINT, self.tr("Checkpoint"), fileFilter=CHECKPOINT_FILTER),
                "best.pt or last.pt written by 'Train'.",
            )
        )
        self.addParameter(
            with_help(
                QgsProcessingParameterFile(self.DET_DATA, self.tr("Detection chip dataset"), folder, optional=True),
                "Scored with mAP (needs a detection head).",
            )
        )
        self.addParameter(
            with_help(
                QgsProcessingParameterFile(self.SEG_DATA, self.tr("Segmentation chip dataset"), folder, optional=True),
                "Scored with mIoU on eroded masks (needs a segmentation head).",
            )
        )
        self.addParameter(
            with_help(
                QgsProcessingParameterString(self.SPLIT, self.tr("Split"), defaultValue="val"),
                "Name of the split in the chip datasets (val; test if your datasets have one).",
            )
        )
        self.addParameter(
            advanced(
                with_help(
                    QgsProcessingParameterEnum(self.DEVICE, self.tr("Device"), list(DEVICES), defaultValue=0),
                    "auto: the GPU when PyTorch sees one, else the CPU.",
                )
            )
        )
        number = QgsProcessingParameterNumber
        self.addParameter(
            advanced(
                with_help(
                    number(self.BATCH_SIZE, self.tr("Batch size"), number.Integer, 8, False, 1),
                    "Chips per forward pass.",
                )
            )
        )
        self.addParameter(
            advanced(
                with_help(
                    number(self.MAX_CHIPS, self.tr("At most this many chips"), number.Integer, None, True, 1),
                    "For a quick look; empty: all chips of the split.",
                )
            )
        )
        self.addParameter(
            with_help(
                QgsProcessingParameterFileDestination(
                    self.OUTPUT, self.tr("Report (JSON)"), fileFilter="JSON (*.json)"
                ),
                "Every metric: per-class AP / IoU / F1, mAP, AP50, mIoU, overall accuracy.",
            )
        )
        for name, _, description in NUMBERS:
            self.addOutput(QgsProcessingOutputNumber(name, self.tr(description)))

    def check_values(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str | None:
        if is_unset(parameters, self.DET_DATA) and is_unset(parameters, self.SEG_DATA):
            return "Give a detection chip dataset, a segmentation chip dataset, or both (found neither)."
        return None

    def processAlgorithm(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        checkpoint = self.engine("engine.train.checkpoint")
        run = self.engine("engine.evaluate.run")
        report = self.engine("engine.evaluate.report")
        device = DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)]
        if device == "auto":
            device = "cuda" if self.engine("torch").cuda.is_available() else "cpu"
        path = self.existing_path(self.parameterAsFile(parameters, self.CHECKPOINT, context), "Checkpoint")
        roots = {}
        for key, name in (("det_root", self.DET_DATA), ("seg_root", self.SEG_DATA)):
            if not is_unset(parameters, name):
                roots[key] = self.existing_path(self.parameterAsFile(parameters, name, context), key)
        net, _ = self.call_engine(checkpoint.model_from_checkpoint, feedback, path=path, device=device)
        metrics = self.call_engine(
            run.evaluate_model,
            feedback,
            net=net,
            det_root=roots.get("det_root"),
            seg_root=roots.get("seg_root"),
            split=self.parameterAsString(parameters, self.SPLIT, context),
            device=device,
            batch_size=self.parameterAsInt(parameters, self.BATCH_SIZE, context),
            max_chips=self.optional_number(parameters, self.MAX_CHIPS, context, integer=True),
        )
        out_path = Path(self.parameterAsFileOutput(parameters, self.OUTPUT, context))
        report.write_report(out_path, metrics)
        feedback.pushInfo(report.format_table({k: v for k, v in metrics.items() if isinstance(v, dict)}))
        results: dict[str, Any] = {self.OUTPUT: str(out_path)}
        for name, key, _ in NUMBERS:
            value = metrics.get(key)
            results[name] = float(value) if isinstance(value, (int, float)) else None
        return results
