"""pmtl:train: train a student / teacher / baseline in a child Python process, streaming progress and metrics."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputFile,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ..engine_process import ProcessResult, engine_command, run_streaming
from ..environment import activate, engine_root, install_message, subprocess_environment
from .base import DEVICES, PmtlAlgorithm, advanced, is_unset, with_help

MODELS = (
    ("as in the config (student without a config)", None),
    ("student: ResNet18 + FPN", "models/student.yaml"),
    ("detection teacher: ResNet50 + PAFPN", "models/teacher_det.yaml"),
    ("segmentation teacher: ResNet50 + PAFPN", "models/teacher_seg.yaml"),
)
KD_VARIANTS = (
    ("as in the config (none without a config)", None),
    ("none (partial multi-task learning)", (False, "none")),
    ("soft", (True, "none")),
    ("mse", (False, "mse")),
    ("pdf", (False, "pdf")),
    ("soft + mse", (True, "mse")),
    ("soft + pdf", (True, "pdf")),
)
CHECKPOINT_FILTER = "PyTorch checkpoints (*.pt *.pth);;All files (*.*)"


def training_command(python: Path, config: str | None, overrides: list[str], resume: bool) -> list[str]:
    """The ``python -m engine.train`` command line (JSON progress on stdout, cancel on stdin)."""
    arguments = ["--config", config] if config else []
    if resume:
        arguments.append("--resume")
    return engine_command(python, "engine.train", arguments + overrides)


def split_overrides(text: str) -> list[str]:
    """``key=value`` items separated by spaces; quotes group, backslashes stay (``data.det=C:\\Users\\me``)."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.escape = ""
    try:
        return list(lexer)
    except ValueError as exc:  # an unclosed quote
        raise QgsProcessingException(f"Config overrides: {exc} in {text!r}.") from exc


def error_lines(result: ProcessResult) -> str:
    """The engine's error event if it sent one, else its error lines, else the last lines of its output."""
    error = result.last_event("error")
    if error is not None and error.get("message"):
        return str(error["message"])
    errors = [line for line in result.tail if line.startswith("error:") or "Error:" in line]
    return "\n".join(errors[-5:] or result.tail[-15:])


class Train(PmtlAlgorithm):
    ALG_ID = "train"
    DISPLAY_NAME = "Train a detection + segmentation network"
    GROUP_ID = "model"
    GROUP_NAME = "Model"
    REQUIRED_MODULES = ("torch", "torchvision", "yaml")
    HELP = (
        "Trains one network for object detection (building, tree, car) and semantic segmentation (6 ISPRS "
        "classes) from chip datasets labelled for ONE task each (partial multi-task learning), optionally "
        "distilling the missing task from frozen teachers (soft = logit distillation; mse / pdf = feature "
        "distillation, pdf weighted by teacher-student disagreement). Give a detection dataset, a segmentation "
        "dataset or both; the tasks follow from what is given. Teachers are trained with the same tool (model = "
        "detection / segmentation teacher, one dataset).\n\n"
        "Training runs in a separate Python process (python -m engine.train): QGIS stays responsive, the log "
        "shows losses and validation metrics per epoch, and Cancel stops it after the current step, keeping the "
        "last checkpoint ('Resume' continues from it). Checkpoints: OUTPUT/best.pt (best on the validation "
        "split, never the test split) and OUTPUT/last.pt.\n\n"
        "Example (qgis_process): qgis_process run pmtl:train -- DET_DATA=/data/chips_potsdam "
        "SEG_DATA=/data/chips_vaihingen KD=6 DET_TEACHER=/runs/tdet/best.pt SEG_TEACHER=/runs/tseg/best.pt "
        "EPOCHS=70 OUTPUT=/runs/student"
    )

    CONFIG = "CONFIG"
    MODEL = "MODEL"
    DET_DATA = "DET_DATA"
    SEG_DATA = "SEG_DATA"
    KD = "KD"
    DET_TEACHER = "DET_TEACHER"
    SEG_TEACHER = "SEG_TEACHER"
    EPOCHS = "EPOCHS"
    BATCH_SIZE = "BATCH_SIZE"
    LR = "LR"
    ITERS = "ITERS_PER_EPOCH"
    DEVICE = "DEVICE"
    SEED = "SEED"
    RESUME = "RESUME"
    OVERRIDES = "OVERRIDES"
    OUTPUT = "OUTPUT"
    CHECKPOINT = "CHECKPOINT"
    LAST_CHECKPOINT = "LAST_CHECKPOINT"
    METRICS = "METRICS"

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        folder = QgsProcessingParameterFile.Folder
        self.addParameter(
            with_help(
                QgsProcessingParameterFile(self.DET_DATA, self.tr("Detection chip dataset"), folder, optional=True),
                "A chip dataset folder ('Chip tiles'); its boxes train the detection head.",
            )
        )
        self.addParameter(
            with_help(
                QgsProcessingParameterFile(self.SEG_DATA, self.tr("Segmentation chip dataset"), folder, optional=True),
                "A chip dataset folder; its class masks train the segmentation head.",
            )
        )
        self.addParameter(
            with_help(
                QgsProcessingParameterEnum(self.MODEL, self.tr("Network"), [m[0] for m in MODELS], defaultValue=0),
                "The student is what you deploy; teachers (larger) are trained first for distillation.",
            )
        )
        self.addParameter(
            with_help(
                QgsProcessingParameterEnum(
                    self.KD, self.tr("Knowledge distillation"), [k[0] for k in KD_VARIANTS], defaultValue=0
                ),
                "Needs both datasets and both teachers. The paper's best: soft + pdf.",
            )
        )
        for name, label in (
            (self.DET_TEACHER, "Detection teacher checkpoint"),
            (self.SEG_TEACHER, "Segmentation teacher checkpoint"),
        ):
            self.addParameter(
                with_help(
                    QgsProcessingParameterFile(name, self.tr(label), fileFilter=CHECKPOINT_FILTER, optional=True),
                    "best.pt of a teacher trained with this tool (used only with distillation).",
                )
            )
        self.addParameter(
            with_help(
                QgsProcessingParameterNumber(
                    self.EPOCHS, self.tr("Epochs"), QgsProcessingParameterNumber.Integer, None, True, 1
                ),
                "Empty: the config's value (70 by default, as in the paper).",
            )
        )
        self.addParameter(
            advanced(
                with_help(
                    QgsProcessingParameterFile(
                        self.CONFIG, self.tr("Training config (YAML)"), fileFilter="YAML (*.yaml *.yml)", optional=True
                    ),
                    "A training config; the parameters above override it. Shipped: "
                    f"{engine_root() or '.'}/models/train/ (teacher_det, teacher_seg, student_mtl, student_kd).yaml",
                )
            )
        )
        number = QgsProcessingParameterNumber
        for name, label, kind, minimum, text in (
            (self.BATCH_SIZE, "Batch size", number.Integer, 1, "Images per batch and task (empty: config)."),
            (self.LR, "Learning rate", number.Double, 0.0, "Peak SGD learning rate (empty: config, 0.01)."),
            (self.ITERS, "Iterations per epoch", number.Integer, 1, "Empty: one pass over the larger dataset."),
            (self.SEED, "Random seed", number.Integer, 0, "Empty: config (0)."),
        ):
            self.addParameter(advanced(with_help(number(name, self.tr(label), kind, None, True, minimum), text)))
        self.addParameter(
            advanced(
                with_help(
                    QgsProcessingParameterEnum(self.DEVICE, self.tr("Device"), list(DEVICES), defaultValue=0),
                    "auto: CUDA when PyTorch sees a GPU, else the CPU.",
                )
            )
        )
        self.addParameter(
            advanced(
                with_help(
                    QgsProcessingParameterBoolean(self.RESUME, self.tr("Resume from OUTPUT/last.pt"), False),
                    "Continue a cancelled or interrupted run exactly where it stopped.",
                )
            )
        )
        self.addParameter(
            advanced(
                with_help(
                    QgsProcessingParameterString(self.OVERRIDES, self.tr("Config overrides"), optional=True),
                    "Extra dotted key=value pairs, space separated, e.g. 'optim.warmup_iters=100 loss.focal_gamma=1'.",
                )
            )
        )
        self.addParameter(
            with_help(
                QgsProcessingParameterFolderDestination(self.OUTPUT, self.tr("Checkpoint folder")),
                "Receives best.pt, last.pt, the effective config, metrics per epoch and training curves.",
            )
        )
        self.addOutput(QgsProcessingOutputFile(self.CHECKPOINT, self.tr("Best checkpoint (best.pt)")))
        self.addOutput(QgsProcessingOutputFile(self.LAST_CHECKPOINT, self.tr("Last checkpoint (last.pt)")))
        self.addOutput(QgsProcessingOutputString(self.METRICS, self.tr("Best validation metrics (JSON)")))

    def check_values(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str | None:
        if (
            is_unset(parameters, self.DET_DATA)
            and is_unset(parameters, self.SEG_DATA)
            and is_unset(parameters, self.CONFIG)
        ):
            return "Give a detection chip dataset, a segmentation chip dataset, or both (found neither)."
        if KD_VARIANTS[self.parameterAsEnum(parameters, self.KD, context)][1] not in (None, (False, "none")):
            missing = [
                label
                for name, label in (
                    (self.DET_DATA, "Detection chip dataset"),
                    (self.SEG_DATA, "Segmentation chip dataset"),
                    (self.DET_TEACHER, "Detection teacher checkpoint"),
                    (self.SEG_TEACHER, "Segmentation teacher checkpoint"),
                )
                if is_unset(parameters, name)
            ]
            if missing:
                return f"Distillation needs both datasets and both teachers; missing: {', '.join(missing)}."
        return None

    def overrides(self, parameters: dict[str, Any], context: QgsProcessingContext, out_dir: Path) -> list[str]:
        """Dotted ``key=value`` overrides of the engine's training config for the parameters the user set."""
        root = engine_root() or Path.cwd()
        items = [f"runtime.out={out_dir}"]
        datasets = {}
        for task, name in (("det", self.DET_DATA), ("seg", self.SEG_DATA)):
            if not is_unset(parameters, name):
                datasets[task] = self.existing_path(self.parameterAsFile(parameters, name, context), f"{task} dataset")
                items.append(f"data.{task}={datasets[task].resolve()}")
        if datasets:
            items.append(f"tasks=[{','.join(datasets)}]")
        model = MODELS[self.parameterAsEnum(parameters, self.MODEL, context)][1]
        if model:
            items.append(f"model={(root / model).resolve()}")
        kd = KD_VARIANTS[self.parameterAsEnum(parameters, self.KD, context)][1]
        if kd is not None:
            items += [f"kd.soft={'true' if kd[0] else 'false'}", f"kd.feature={kd[1]}"]
        for task, name in (("det", self.DET_TEACHER), ("seg", self.SEG_TEACHER)):
            if not is_unset(parameters, name):
                path = self.existing_path(self.parameterAsFile(parameters, name, context), f"{task} teacher")
                items.append(f"kd.{task}_teacher={path.resolve()}")
        for name, key, integer in (
            (self.EPOCHS, "optim.epochs", True),
            (self.BATCH_SIZE, "data.batch_size", True),
            (self.LR, "optim.lr", False),
            (self.ITERS, "optim.iters_per_epoch", True),
            (self.SEED, "runtime.seed", True),
        ):
            value = self.optional_number(parameters, name, context, integer=integer)
            if value is not None:
                items.append(f"{key}={value}")
        device = DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)]
        if device != "auto":
            items.append(f"runtime.device={device}")
        if is_unset(parameters, self.OVERRIDES):
            return items
        return items + split_overrides(self.parameterAsString(parameters, self.OVERRIDES, context))

    def processAlgorithm(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        env = activate()
        if env.problem:
            raise QgsProcessingException(install_message(["torch"]))
        out_dir = Path(self.parameterAsString(parameters, self.OUTPUT, context)).resolve()
        config = None
        if not is_unset(parameters, self.CONFIG):
            config = str(
                self.existing_path(self.parameterAsFile(parameters, self.CONFIG, context), "Training config").resolve()
            )
        overrides = self.overrides(parameters, context, out_dir)
        # The engine's own validator, in-process (no torch): a typo fails in a second, not after torch loads.
        self.call_engine(self.engine("engine.train.config").load_config, feedback, path=config, overrides=overrides)
        command = training_command(
            env.python or Path(sys.executable),
            config,
            overrides,
            self.parameterAsBool(parameters, self.RESUME, context),
        )
        feedback.pushCommandInfo(" ".join(shlex.quote(part) for part in command))
        feedback.pushInfo("Starting the engine (loading PyTorch)…")
        result = run_streaming(command, feedback, env=subprocess_environment(env), cwd=engine_root())
        return self._results(result, out_dir, feedback)

    def _results(self, result: ProcessResult, out_dir: Path, feedback: QgsProcessingFeedback) -> dict[str, Any]:
        if result.returncode != 0 and any("No module named" in line for line in result.tail):
            missing = [
                line.split("No module named")[-1].strip(" '\"") for line in result.tail if "No module named" in line
            ]
            raise QgsProcessingException(install_message([missing[-1].split(".")[0]]))
        best, last = out_dir / "best.pt", out_dir / "last.pt"
        done = [e for e in result.events if e.get("event") == "done"]
        if done and done[-1].get("best_checkpoint"):
            best = Path(str(done[-1]["best_checkpoint"]))
        if result.canceled:
            self._report_cancel(result, last, feedback)
        elif result.returncode != 0:
            raise QgsProcessingException(f"Training failed (exit code {result.returncode}):\n{error_lines(result)}")
        metrics = done[-1].get("metrics", {}) if done else {}
        results: dict[str, Any] = {self.OUTPUT: str(out_dir), self.METRICS: json.dumps(metrics, default=str)}
        if best.exists():
            results[self.CHECKPOINT] = str(best)
        elif last.exists():
            results[self.CHECKPOINT] = str(last)
        if last.exists():
            results[self.LAST_CHECKPOINT] = str(last)
        if self.CHECKPOINT not in results:
            raise QgsProcessingException(f"Training ended but wrote no checkpoint in {out_dir}.")
        return results

    @staticmethod
    def _report_cancel(result: ProcessResult, last: Path, feedback: QgsProcessingFeedback) -> None:
        """Say what a cancelled run leaves: a checkpoint to resume from (and of which epoch), or nothing."""
        if not last.exists():
            raise QgsProcessingException(
                "Training was cancelled before the end of its first epoch: no checkpoint was written, so there is "
                "nothing to resume from."
            )
        metrics = result.last_event("metrics")
        epoch = f"epoch {metrics['epoch']}" if metrics and "epoch" in metrics else "an earlier run"
        feedback.pushWarning(
            f"Training cancelled; the checkpoint of {epoch} is kept: {last} (tick 'Resume' and run again to continue)."
        )
