"""pmtl:train: train a student / teacher / baseline in a child Python process, streaming progress and metrics."""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingUtils,
    QgsRasterLayer,
)

from ..engine_process import ProcessResult, engine_command
from ..environment import engine_root, install_message
from ..scope import engine_scope, import_engine
from .base import PmtlAlgorithm, is_unset
from .params import ADVANCED_OPTIONAL, Spec, output, spec

MODELS = (
    ("as in the config (student without a config)", None),
    ("student: ResNet18 + FPN", "models/student.yaml"),
    (
        "CPU student: ResNet18 + FPN, narrow neck, small-object anchors (the demo's map model)",
        "models/student_map.yaml",
    ),
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
RUNS_ENV_VAR = "PMTL_RUNS"


def runs_root() -> Path:
    """Where training runs go by default: ``$PMTL_RUNS``, else ``~/pmtl/runs`` (visible, kept after QGIS exits)."""
    return Path(os.environ.get(RUNS_ENV_VAR) or Path.home() / "pmtl" / "runs").expanduser()


def new_run_folder(now: datetime.datetime | None = None) -> Path:
    """A fresh default output folder, ``runs_root()/train-YYYYmmdd-HHMMSS`` (each dialog opening gets its own)."""
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    return runs_root() / f"train-{stamp}"


def resumable_runs(root: Path, limit: int = 5) -> list[Path]:
    """The most recent run folders under ``root`` that hold a last.pt, newest first."""
    runs = [p.parent for p in root.glob("*/last.pt")] if root.is_dir() else []
    return sorted(runs, key=lambda p: (p / "last.pt").stat().st_mtime, reverse=True)[:limit]


def yaml_path(path: Path | str) -> str:
    """A path as a config override value: JSON-quoted (JSON is YAML), so spaces, colons, '#' and Windows
    backslashes survive the engine's YAML parsing."""
    return json.dumps(str(path))


def chip_size_of(datasets: list[Path], default: int | None = None) -> int:
    """The chip size of the first labelled chip dataset (its manifest.json), for chipping unlabelled rasters alike;
    ``default`` (None: the engine's default chip size) when none records one."""
    for root in datasets:
        try:
            size = json.loads((root / "manifest.json").read_text(encoding="utf-8")).get("chip_size")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(size, int) and size > 0:
            return size
    return default if default is not None else import_engine("engine.core.options").ChipOptions.size


def training_command(python: Path, config: str | None, overrides: list[str], resume: bool) -> list[str]:
    """The ``python -m engine.train`` command line (JSON progress on stdout, cancel on stdin)."""
    arguments = ["--config", config] if config else []
    if resume:
        arguments.append("--resume")
    return engine_command(python, "engine.train", arguments + overrides)


def split_overrides(text: str) -> list[str]:
    """``key=value`` items separated by spaces; quotes group, backslashes stay (``data.det=C:\\\\Users\\\\me``)."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.escape = ""
    try:
        return list(lexer)
    except ValueError as exc:  # an unclosed quote
        raise QgsProcessingException(f"Config overrides: {exc} in {text!r}.") from exc


class Train(PmtlAlgorithm):
    ALG_ID = "train"
    DISPLAY_NAME = "Train a detection + segmentation network"
    GROUP_ID = "model"
    REQUIRED_MODULES = ("torch", "torchvision", "yaml")
    HELP = (
        "Trains one network for object detection (building, tree, car) and semantic segmentation (6 ISPRS "
        "classes) from chip datasets labelled for ONE task each (partial multi-task learning), optionally "
        "distilling the missing task from frozen teachers (soft = logit distillation; mse / pdf = feature "
        "distillation, pdf weighted by teacher-student disagreement). Give a detection dataset, a segmentation "
        "dataset or both; the tasks follow from what is given. Teachers are trained with the same tool (model = "
        "detection / segmentation teacher, one dataset).\n\n"
        "Training runs in a separate Python process (python -m engine.train): QGIS stays responsive, the bar moves "
        "every step, the log shows losses and validation metrics per epoch, and Cancel stops it after the current "
        "step. Checkpoints: OUTPUT/best.pt (best on the validation split, never the test split) and OUTPUT/last.pt "
        "(after every epoch). The output folder defaults to a new folder under ~/pmtl/runs (or $PMTL_RUNS), kept "
        "after QGIS exits; to continue a cancelled or interrupted run, choose its folder and tick 'Resume the run in "
        "the checkpoint folder'.\n\n"
        "Example (qgis_process): qgis_process run pmtl:train -- DET_DATA=/data/chips_potsdam "
        "SEG_DATA=/data/chips_vaihingen KD=6 DET_TEACHER=/runs/tdet/best.pt SEG_TEACHER=/runs/tseg/best.pt "
        "EPOCHS=70 OUTPUT=/runs/student"
    )

    def parameters(self) -> list[Spec]:
        return [*self._data_and_model(), *self._schedule(), *self._run()]

    def _data_and_model(self) -> list[Spec]:
        det = "A chip dataset folder (the 'Chip …' algorithms); its boxes train the detection head."
        seg = "A chip dataset folder; its class masks train the segmentation head."
        network = "The student is what you deploy; teachers (larger) are trained first for distillation."
        kd = "Needs both datasets and both teachers. The paper's best: soft + pdf."
        unlabelled = (
            "Chip dataset folders ('Chip unlabelled rasters', or any chip dataset: its labels are ignored) or "
            "raster files, which are chipped first into CHECKPOINT FOLDER/unlabelled/ at the training chip size. "
            "The teachers label them: needs a distillation variant and both teacher checkpoints."
        )
        teacher = "best.pt of a teacher trained with this tool (used only with distillation)."
        files = {"layerType": QgsProcessing.TypeFile, "optional": True}
        checkpoints = {"fileFilter": CHECKPOINT_FILTER, "optional": True}
        return [
            spec("folder", "DET_DATA", "Detection chip dataset", det, optional=True, engine="data.det"),
            spec("folder", "SEG_DATA", "Segmentation chip dataset", seg, optional=True, engine="data.seg"),
            spec("enum", "MODEL", "Network", network, options=[m[0] for m in MODELS], defaultValue=0, engine="model"),
            spec(
                "enum",
                "KD",
                "Knowledge distillation",
                kd,
                options=[k[0] for k in KD_VARIANTS],
                defaultValue=0,
                engine="kd",
            ),
            spec(
                "layers",
                "UNLABELLED",
                "Unlabelled imagery (distillation only)",
                unlabelled,
                **files,
                engine="data.unlabelled",
            ),
            spec(
                "file", "DET_TEACHER", "Detection teacher checkpoint", teacher, **checkpoints, engine="kd.det_teacher"
            ),
            spec(
                "file",
                "SEG_TEACHER",
                "Segmentation teacher checkpoint",
                teacher,
                **checkpoints,
                engine="kd.seg_teacher",
            ),
        ]

    def _schedule(self) -> list[Spec]:
        options = self.engine_options()
        train = options.config_defaults(options.TrainOptions)
        epochs = f"Empty: the config's value ({train['epochs']} by default, as in the paper)."
        resume = (
            "Continue a cancelled or interrupted run exactly where it stopped: choose its folder as the "
            "checkpoint folder (it holds last.pt)."
        )
        config = (
            "A training config; the parameters above override it. Shipped: "
            f"{engine_root() or '.'}/models/train/ (teacher_det, teacher_seg, student_mtl, student_kd).yaml"
        )
        lr, seed = f"Peak SGD learning rate (empty: config, {train['lr']:g}).", f"Empty: config ({train['seed']})."
        batch, iters = "Images per batch and task (empty: config).", "Empty: one pass over the larger dataset."
        optional, yaml_files = ADVANCED_OPTIONAL, "YAML (*.yaml *.yml)"
        return [
            spec("integer", "EPOCHS", "Epochs", epochs, optional=True, minValue=1, engine="optim.epochs"),
            spec("boolean", "RESUME", "Resume the run in the checkpoint folder", resume, defaultValue=False),
            spec("file", "CONFIG", "Training config (YAML)", config, fileFilter=yaml_files, **optional),
            spec("integer", "BATCH_SIZE", "Batch size", batch, **optional, minValue=1, engine="data.batch_size"),
            spec("double", "LR", "Learning rate", lr, **optional, minValue=0.0, engine="optim.lr"),
            spec(
                "integer",
                "ITERS_PER_EPOCH",
                "Iterations per epoch",
                iters,
                **optional,
                minValue=1,
                engine="optim.iters_per_epoch",
            ),
            spec("integer", "SEED", "Random seed", seed, **optional, minValue=0, engine="runtime.seed"),
        ]

    def _run(self) -> list[Spec]:
        overrides = (
            "Extra dotted key=value pairs, space separated, e.g. 'optim.warmup_iters=100 loss.focal_gamma=1' "
            '(quote a value with spaces: "data.det=C:\\My chips").'
        )
        folder = (
            "Receives best.pt, last.pt, the effective config, metrics per epoch and training curves. Default: "
            "a new folder under ~/pmtl/runs ($PMTL_RUNS), kept after QGIS exits."
        )
        return [
            self.device_spec("auto: CUDA when PyTorch sees a GPU, else the CPU."),
            spec("text", "OVERRIDES", "Config overrides", overrides, **ADVANCED_OPTIONAL),
            spec(
                "folder_out",
                "OUTPUT",
                "Checkpoint folder",
                folder,
                defaultValue=str(new_run_folder()),
                engine="runtime.out",
            ),
            output("file", "CHECKPOINT", "Best checkpoint (best.pt)"),
            output("file", "LAST_CHECKPOINT", "Last checkpoint (last.pt)"),
            output("string", "METRICS", "Best validation metrics (JSON)"),
        ]

    def check_values(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str | None:
        if all(is_unset(parameters, name) for name in ("DET_DATA", "SEG_DATA", "CONFIG")):
            return "Give a detection chip dataset, a segmentation chip dataset, or both (found neither)."
        try:
            with engine_scope():
                self.validate(parameters, context)
        except QgsProcessingException as exc:
            return str(exc)
        return self._check_output(parameters, context)

    def validate(self, parameters: dict[str, Any], context: QgsProcessingContext) -> None:
        """The engine's own config validator on the config these parameters make, in-process (no torch): a wrong
        value fails in a second, not after torch loads (and before any unlabelled raster is chipped). Its errors
        name the dialog's fields."""
        out_dir = Path(self.parameterAsFileOutput(parameters, "OUTPUT", context)).resolve()
        config = self.optional_file(parameters, "CONFIG", context)
        pending = ['data.unlabelled=["(chipped next)"]'] if self._has_unlabelled(parameters) else []
        overrides = self.overrides(parameters, context, out_dir) + pending
        load_config = self.engine("engine.train.config").load_config
        try:
            load_config(None if config is None else str(config.resolve()), overrides)
        except self.engine("engine.core.errors").PmtlError as exc:
            raise QgsProcessingException(self.config_text(exc.render(self.param_words))) from exc

    def config_text(self, message: str) -> str:
        """An engine config error in the dialog's words: the config key it starts with becomes the label of the field
        that sets it (its spec's ``engine`` word; the key kept in brackets, for a config file); teacher keys named
        later on become their labels too."""
        labels = {s.engine: self.parameterDefinition(s.name).description() for s in self.parameters() if s.engine}
        labels["runtime.device"] = self.parameterDefinition("DEVICE").description()
        if message.startswith("override '"):
            return f"'{self.parameterDefinition('OVERRIDES').description()}': {message}"
        lead = re.match(r"config key '([\w.]+)'", message)
        if lead is None or lead.group(1) not in labels:
            return message
        key = lead.group(1)
        rest = re.sub(r"\bkd\.(det|seg)_teacher\b", lambda m: f"'{labels[m.group(0)]}'", message[lead.end() :])
        return f"'{labels[key]}' (config key {key}){rest}"

    def _has_unlabelled(self, parameters: dict[str, Any]) -> bool:
        return not is_unset(parameters, "UNLABELLED") and bool(parameters.get("UNLABELLED"))

    def _check_output(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str | None:
        """Resume needs a run to continue; a new run must not overwrite one."""
        out_dir = Path(self.parameterAsFileOutput(parameters, "OUTPUT", context))
        last = out_dir / "last.pt"
        if self.parameterAsBool(parameters, "RESUME", context) and not last.is_file():
            runs = resumable_runs(runs_root())
            hint = f" Runs that can be resumed: {', '.join(map(str, runs))}." if runs else ""
            return f"Resume: the checkpoint folder {out_dir} holds no last.pt to continue from.{hint}"
        if not self.parameterAsBool(parameters, "RESUME", context) and last.is_file():
            return (
                f"Checkpoint folder: {out_dir} already holds a training run (last.pt). Tick 'Resume' to continue "
                "it, or choose another folder."
            )
        return None

    def overrides(self, parameters: dict[str, Any], context: QgsProcessingContext, out_dir: Path) -> list[str]:
        """Dotted ``key=value`` overrides of the engine's training config for the parameters the user set."""
        root = engine_root() or Path.cwd()
        items = [f"runtime.out={yaml_path(out_dir)}"]
        datasets = {}
        for task, name in (("det", "DET_DATA"), ("seg", "SEG_DATA")):
            path = self.optional_file(parameters, name, context)
            if path is not None:
                datasets[task] = path.resolve()
                items.append(f"data.{task}={yaml_path(datasets[task])}")
        if datasets:
            items.append(f"tasks=[{','.join(datasets)}]")
        model = MODELS[self.parameterAsEnum(parameters, "MODEL", context)][1]
        if model:
            items.append(f"model={yaml_path((root / model).resolve())}")
        kd = KD_VARIANTS[self.parameterAsEnum(parameters, "KD", context)][1]
        if kd is not None:
            items += [f"kd.soft={'true' if kd[0] else 'false'}", f"kd.feature={kd[1]}"]
        for task, name in (("det", "DET_TEACHER"), ("seg", "SEG_TEACHER")):
            path = self.optional_file(parameters, name, context)
            if path is not None:
                items.append(f"kd.{task}_teacher={yaml_path(path.resolve())}")
        items += [f"{key}={value}" for key, value in self.engine_numbers(parameters, context)]
        device = self.device(parameters, context)
        if device != "auto":
            items.append(f"runtime.device={device}")
        if is_unset(parameters, "OVERRIDES"):
            return items
        return items + split_overrides(self.parameterAsString(parameters, "OVERRIDES", context))

    def process(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        self.validate(parameters, context)  # again: a model's child step may skip the dialog's check
        out_dir = Path(self.parameterAsFileOutput(parameters, "OUTPUT", context)).resolve()
        config = self.optional_file(parameters, "CONFIG", context)
        config_path = None if config is None else str(config.resolve())
        overrides = self.overrides(parameters, context, out_dir)
        if self._has_unlabelled(parameters):
            roots = self.unlabelled_roots(parameters, context, out_dir, feedback)
            overrides.append(f"data.unlabelled={json.dumps([str(root) for root in roots])}")
        env = self.engine_env()
        resume = self.parameterAsBool(parameters, "RESUME", context)
        result = self.run_command(training_command(env.python, config_path, overrides, resume), env, feedback)
        return self._results(result, out_dir, feedback)

    def unlabelled_roots(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        out_dir: Path,
        feedback: QgsProcessingFeedback,
    ) -> list[Path]:
        """Chip dataset folders for ``data.unlabelled``: folders as given, rasters chipped (task none) into
        ``out_dir/unlabelled/NAME`` first — reused when already complete, so a resumed run does not chip again."""
        labelled = [self.optional_file(parameters, name, context) for name in ("DET_DATA", "SEG_DATA")]
        size = chip_size_of([root for root in labelled if root is not None])
        roots: list[Path] = []
        for entry in self.parameterAsFileList(parameters, "UNLABELLED", context):
            path = Path(entry)
            if path.is_dir() and (path / "manifest.json").is_file():
                roots.append(path.resolve())
                continue
            raster = path if path.is_file() else self._project_raster(entry, context)
            if raster is None:
                raise QgsProcessingException(
                    f"Unlabelled imagery: {entry!r} is neither a chip dataset folder (with manifest.json) nor a "
                    "raster file or raster layer."
                )
            roots.append(self._chip_unlabelled(raster, out_dir / "unlabelled" / raster.stem, size, feedback))
        return roots

    @staticmethod
    def _project_raster(entry: str, context: QgsProcessingContext) -> Path | None:
        """The file behind a raster layer given by id or name (qgis_process / models pass layers so)."""
        layer = QgsProcessingUtils.mapLayerFromString(entry, context)
        if isinstance(layer, QgsRasterLayer) and layer.providerType() == "gdal":
            source = Path(layer.source().split("|")[0])
            return source if source.is_file() else None
        return None

    def _chip_unlabelled(self, raster: Path, out: Path, size: int, feedback: QgsProcessingFeedback) -> Path:
        """Chip one raster with no labels (all chips in the train split), like ``engine.chip --task none``."""
        try:
            if json.loads((out / "manifest.json").read_text(encoding="utf-8")).get("complete"):
                feedback.pushInfo(f"Unlabelled imagery: reusing the chips of {raster} in {out}")
                return out.resolve()
        except (OSError, ValueError):
            pass
        userdata = self.engine("engine.chip.userdata")
        splits = self.engine("engine.chip.splits")
        plan = splits.SplitPlan(mode="tile", val=splits.default_val_fraction("none"))
        feedback.pushInfo(f"Unlabelled imagery: chipping {raster} into {out} ({size} px chips)")
        self.call_engine(
            userdata.chip_images,
            feedback,
            images=[str(raster)],
            out_dir=out,
            labels=userdata.LabelSource(task="none"),
            size=size,
            stride=size,
            plan=plan,
            overwrite=True,
            progress=self.progress(feedback),
        )
        return out.resolve()

    def _results(self, result: ProcessResult, out_dir: Path, feedback: QgsProcessingFeedback) -> dict[str, Any]:
        missing = result.missing_module()
        if missing:
            raise QgsProcessingException(install_message([missing]))
        best, last = out_dir / "best.pt", out_dir / "last.pt"
        done = result.last_event("done")
        if done and done.get("best_checkpoint"):
            best = Path(str(done["best_checkpoint"]))
        if result.canceled:
            self._report_cancel(result, last, feedback)
        elif result.returncode != 0:
            raise QgsProcessingException(
                f"Training failed (exit code {result.returncode}):\n{self.engine_text(result.error_text())}"
            )
        metrics = done.get("metrics", {}) if done else {}
        results: dict[str, Any] = {"OUTPUT": str(out_dir), "METRICS": json.dumps(metrics, default=str)}
        if best.exists():
            results["CHECKPOINT"] = str(best)
        elif last.exists():
            results["CHECKPOINT"] = str(last)
        if last.exists():
            results["LAST_CHECKPOINT"] = str(last)
        if "CHECKPOINT" not in results:
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
            f"Training cancelled; the checkpoint of {epoch} is kept: {last} (tick 'Resume the run in the checkpoint "
            "folder' and run again to continue)."
        )
