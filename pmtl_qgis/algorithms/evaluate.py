"""pmtl:evaluate: a checkpoint on chip datasets → detection mAP / segmentation mIoU report (JSON) + numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
)

from .base import PmtlAlgorithm, is_unset
from .params import ADVANCED_OPTIONAL, Spec, output, spec
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
    REQUIRED_MODULES = ("torch", "torchvision")
    HELP = (
        "Measures a trained network on a split of chip datasets: detection mean average precision over IoU "
        "0.50:0.05:0.95 (all-point interpolation, VOC2010+) and AP50 per class on the detection dataset; "
        "segmentation IoU per class, mIoU, overall accuracy and F1 on the eroded (noBoundary) masks of the "
        "segmentation dataset. Writes the full report as JSON and returns the headline numbers, so a model "
        "can compare runs. Runs in a separate Python process (python -m engine.evaluate), like training.\n\n"
        "Example (qgis_process): qgis_process run pmtl:evaluate -- CHECKPOINT=/runs/student/best.pt "
        "DET_DATA=/data/chips_potsdam SEG_DATA=/data/chips_vaihingen SPLIT=val OUTPUT=/runs/student/eval.json"
    )

    def parameters(self) -> list[Spec]:
        split = "Name of the split in the chip datasets (val; test if your datasets have one)."
        det, seg = (
            "Scored with mAP (needs a detection head).",
            "Scored with mIoU on eroded masks (needs a segmentation head).",
        )
        report = "Every metric: per-class AP / IoU / F1, mAP, AP50, mIoU, overall accuracy."
        return [
            spec("file", "CHECKPOINT", "Checkpoint", "best.pt or last.pt of 'Train'.", fileFilter=CHECKPOINT_FILTER),
            spec("folder", "DET_DATA", "Detection chip dataset", det, optional=True),
            spec("folder", "SEG_DATA", "Segmentation chip dataset", seg, optional=True),
            spec("text", "SPLIT", "Split", split, defaultValue="val"),
            self.device_spec("auto: the GPU when PyTorch sees one, else the CPU."),
            spec(
                "integer",
                "BATCH_SIZE",
                "Batch size",
                "Chips per forward pass.",
                defaultValue=8,
                minValue=1,
                advanced=True,
            ),
            spec(
                "integer",
                "MAX_CHIPS",
                "At most this many chips",
                "For a quick look; empty: all chips of the split.",
                **ADVANCED_OPTIONAL,
                minValue=1,
            ),
            spec("file_out", "OUTPUT", "Report (JSON)", report, fileFilter="JSON (*.json)"),
            *[output("number", name, description) for name, _, description in NUMBERS],
        ]

    def check_values(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str | None:
        if is_unset(parameters, "DET_DATA") and is_unset(parameters, "SEG_DATA"):
            return "Give a detection chip dataset, a segmentation chip dataset, or both (found neither)."
        return None

    def arguments(self, parameters: dict[str, Any], context: QgsProcessingContext, out_path: Path) -> list[str]:
        """The ``python -m engine.evaluate`` arguments for these parameters (no sample picture)."""
        checkpoint = self.existing_path(self.parameterAsFile(parameters, "CHECKPOINT", context), "Checkpoint")
        arguments = ["--checkpoint", str(checkpoint), "--out", str(out_path), "--samples", "0"]
        for flag, name in (("--det-chips", "DET_DATA"), ("--seg-chips", "SEG_DATA")):
            path = self.optional_file(parameters, name, context)
            if path is not None:
                arguments += [flag, str(path)]
        arguments += ["--split", self.parameterAsString(parameters, "SPLIT", context)]
        arguments += ["--batch-size", str(self.parameterAsInt(parameters, "BATCH_SIZE", context))]
        arguments += ["--device", self.device(parameters, context)]
        max_chips = self.optional_number(parameters, "MAX_CHIPS", context, integer=True)
        return arguments + (["--max-chips", str(max_chips)] if max_chips is not None else [])

    def process(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        out_path = Path(self.parameterAsFileOutput(parameters, "OUTPUT", context))
        result = self.run_engine("engine.evaluate", self.arguments(parameters, context, out_path), feedback)
        self.check_engine_result(result)
        done = result.last_event("done")
        if done is None or not out_path.is_file():
            raise QgsProcessingException(f"Evaluation ended without a report at {out_path}:\n{result.error_text()}")
        metrics = done.get("metrics") or {}
        results: dict[str, Any] = {"OUTPUT": str(out_path)}
        for name, key, _ in NUMBERS:
            value = metrics.get(key)
            results[name] = float(value) if isinstance(value, (int, float)) else None
        return results
