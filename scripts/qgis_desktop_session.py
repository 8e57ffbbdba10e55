"""The plugin used in QGIS desktop as a user uses it: every algorithm run twice from its dialog, then train + cancel.

    xvfb-run -a -s "-screen 0 1280x860x24" .venv/bin/python scripts/qgis_desktop_session.py --out out/desktop

builds the plugin zip, installs it into a fresh QGIS profile, starts ``qgis`` (the desktop application, under the
virtual display) with this file as its startup code, and then, for each pmtl algorithm in pipeline order, opens
its dialog with the parameters a user would enter, presses **Run**, waits for QGIS's own result handling (loading
and styling the outputs), presses **Run** again, and records both runs (status, seconds, the dialog's log). Last, a
longer training is started from its dialog and **Cancel** is pressed while it trains. Then the routes of issue 20:
*Detect and segment* in the **Batch Processing** panel over two rasters with the optional outputs left empty, the
shipped example model opened in the **graphical modeler** and run from it, and a NIR-R-G raster given to an R-G-B
model (the error must name both band lists and the dialog's field). ``--quick`` runs only the steps that make the
model (generate, chip, train, export) before those routes. Writes
``OUT/session.json`` (every run and check), ``OUT/logs/*.txt`` (the dialogs' logs) and screenshots ``OUT/*.png``;
exits 0 only when every run did what a user expects (scripts/qgis_session_report.py prints the summary).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

INSIDE = "PMTL_SESSION_OUT"
QUICK = "PMTL_SESSION_QUICK"
MAKES_THE_MODEL = ("generate_synthetic", "chip_isprs", "train", "export_onnx")
"""The algorithms --quick runs before the batch, modeler and band-check routes (they need the exported model)."""
REPO = Path(__file__).resolve().parent.parent if "__file__" in globals() else Path(".")  # QGIS exec()s it
RUN_TIMEOUT_S = 600.0
SHORT_STEPS = "data.num_workers=0 data.batch_size=2 data.max_val_chips=2 optim.warmup_iters=1"
TINY_TRAINING = f"{SHORT_STEPS} optim.iters_per_epoch=2"


def orchestrate(out: Path, quick: bool = False) -> int:
    """Outside QGIS: the session in a fresh QGIS, then the verdict from its report."""
    sys.path.insert(0, str(REPO / "scripts"))
    from qgis_desktop import run_in_fresh_qgis

    if out.exists():
        shutil.rmtree(out)
    (out / "logs").mkdir(parents=True)

    def extra_env(work: Path) -> dict[str, str]:  # the Train dialog's default runs folder stays in the sandbox
        return {INSIDE: str(out.resolve()), "PMTL_SESSION_WORK": str(work / "data"), "PMTL_RUNS": str(work / "runs"),
                QUICK: "1" if quick else ""}  # fmt: skip

    run_in_fresh_qgis(__file__, extra_env, timeout=3600)
    report = out / "session.json"
    if not report.is_file():
        print(f"{report}: not written (QGIS ended before the session finished)", file=sys.stderr)
        return 1
    result = json.loads(report.read_text())
    for run in result["runs"]:
        verdict = "ok " if run["as_expected"] else "BAD"
        print(f"{verdict} {run['algorithm']:<22} run {run['run']}  {run['seconds']:6.1f} s  {run['note']}")
    for problem in result["problems"]:
        print(f"BAD {problem}")
    return 0 if result["as_expected"] else 1


def _slug(label: str) -> str:
    return re.sub(r"\W+", "_", label).strip("_")


def _plan(work: Path, quick: bool = False) -> list[dict[str, Any]]:
    """The dialogs of the session (``quick``: only those that make the model)."""
    return [item for item in _full_plan(work) if not quick or item["alg"] in MAKES_THE_MODEL]


def _full_plan(work: Path) -> list[dict[str, Any]]:
    """What the user enters in each dialog, in pipeline order; ``second`` changes fields for the second run (a new
    output folder where the algorithm refuses to overwrite a finished one, as a user would pick)."""
    synth, chips, model = work / "synth", work / "chips", work / "model.onnx"
    run = work / "runs" / "first"
    image = synth / "top" / "top_mosaic_09cm_area1.tif"
    return [
        {"alg": "generate_synthetic", "params": {"DOMAIN": 0, "TILES": 2, "TILE_SIZE_M": 14.0, "OUTPUT": str(synth)},
         "second": {"OVERWRITE": True}},
        {"alg": "chip_isprs", "params": {"INPUT_FOLDER": str(synth), "DATASET": 0, "SIZE": 64, "STRIDE": 64,
                                         "OUTPUT": str(chips)}, "second": {"OVERWRITE": True}},
        {"alg": "train", "params": {"DET_DATA": str(chips), "SEG_DATA": str(chips), "MODEL": 1, "EPOCHS": 1,
                                    "OVERRIDES": TINY_TRAINING, "OUTPUT": str(run)},
         "second": {"OUTPUT": str(work / "runs" / "second")}},
        {"alg": "export_onnx", "params": {"CHECKPOINT": str(run / "best.pt"), "TILE_SIZE": 128, "OUTPUT": str(model)}},
        {"alg": "detect_segment", "params": {"INPUT": str(image), "MODEL": str(model),
                                             "OUTPUT_RASTER": str(work / "classes.tif"),
                                             "OUTPUT_DETECTIONS": str(work / "detections.gpkg")}},
        {"alg": "evaluate", "params": {"CHECKPOINT": str(run / "best.pt"), "DET_DATA": str(chips),
                                       "SEG_DATA": str(chips), "MAX_CHIPS": 4, "OUTPUT": str(work / "eval.json")}},
        {"alg": "render_map", "params": {"INPUT": str(image), "CLASS_MAP": str(work / "classes.tif"),
                                         "DETECTIONS": str(work / "detections.gpkg"), "OUTPUT": str(work / "map.png")}},
        {"alg": "install_dependencies", "params": {"PROFILE": 0}},
    ]  # fmt: skip


class Session:
    """Inside QGIS: a queue of steps; a step returns True when done, False to be polled again (the GUI keeps
    running between polls, so background tasks, result loading and painting happen as in a user's session)."""

    def __init__(self, out: Path, work: Path, quick: bool = False) -> None:
        from qgis.utils import iface

        self.iface, self.out, self.work, self.quick = iface, out, work, quick
        self.runs: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.dialog: Any = None
        self.modeler: Any = None
        self.finished: tuple[bool, dict[str, Any]] | None = None
        self.started = 0.0
        self.cancel_at: dict[str, Any] = {}
        self.steps: list[Any] = [self.prepare]
        for item in _plan(work, quick):
            self.steps += self.two_runs(item)
        if not quick:
            self.steps += self.train_and_cancel()
        self.steps += self.batch_with_empty_outputs() + self.model_from_the_modeler() + self.wrong_bands()
        self.steps += [self.final_screenshot, self.write_report]

    # ---------------------------------------------------------------- driving
    def poll(self) -> None:
        from qgis.PyQt.QtCore import QTimer

        try:
            done = self.steps[0]()
        except Exception as exc:
            self.problems.append(f"{getattr(self.steps[0], '__name__', 'step')}: {exc!r}")
            done = True
        if done:
            self.steps.pop(0)
        if self.steps:
            QTimer.singleShot(250, self.poll)
        else:
            self.quit()

    def prepare(self) -> bool:
        from processing.core.ProcessingConfig import ProcessingConfig
        from qgis.core import Qgis, QgsApplication

        ProcessingConfig.setSettingValue(ProcessingConfig.KEEP_DIALOG_OPEN, True)  # run twice from one dialog
        self.work.mkdir(parents=True, exist_ok=True)
        main = self.iface.mainWindow()
        main.move(0, 0)
        main.resize(1280, 820)

        def on_message(message: str, tag: str, level: Any) -> None:
            if level == Qgis.Critical and tag in ("Python error", "Python warning"):
                self.problems.append(f"QGIS message log [{tag}]: {message[:400]}")

        QgsApplication.messageLog().messageReceived.connect(on_message)
        return True

    def two_runs(self, item: dict[str, Any]) -> list[Any]:
        alg, first = item["alg"], item["params"]
        second = {**first, **item.get("second", {})}
        return [
            lambda: self.open_dialog(alg, first),
            lambda: self.press_run(),
            lambda: self.wait_finished(alg, 1),
            lambda: self.set_parameters(second),
            lambda: self.press_run(),
            lambda: self.wait_finished(alg, 2),
            lambda: self.close_dialog(alg),
        ]

    def train_and_cancel(self) -> list[Any]:
        """Cancel before the first checkpoint; Run again (a shorter epoch) and cancel after the first checkpoint;
        tick Resume and Run: the run finishes where it stopped."""
        run = self.work / "runs" / "cancelled"
        chips = str(self.work / "chips")
        slow = {"DET_DATA": chips, "SEG_DATA": chips, "MODEL": 1, "EPOCHS": 4, "OUTPUT": str(run),
                "OVERRIDES": f"{SHORT_STEPS} optim.iters_per_epoch=400"}  # fmt: skip
        quick = {**slow, "OVERRIDES": f"{SHORT_STEPS} optim.iters_per_epoch=8"}
        return [
            lambda: self.open_dialog("train", slow),
            lambda: self.press_run(),
            lambda: self.wait_until(lambda: self.log_text().count("epoch 1/4") >= 2, "steps logged"),
            self.press_cancel,
            lambda: self.wait_finished("train (cancelled before a checkpoint)", 1),
            lambda: self.check_cancelled("no checkpoint was written"),
            lambda: self.set_parameters(quick),
            lambda: self.press_run(),
            lambda: self.wait_until(lambda: (run / "last.pt").is_file(), "first checkpoint written"),
            self.press_cancel,
            lambda: self.wait_finished("train (cancelled after a checkpoint)", 2),
            lambda: self.check_cancelled("checkpoint of epoch"),
            lambda: self.set_parameters({**quick, "RESUME": True}),
            lambda: self.press_run(),
            lambda: self.wait_finished("train (resumed)", 3),
            lambda: self.check_resumed(run),
            lambda: self.close_dialog("train"),
        ]

    # ---------------------------------------------------------------- dialog actions
    def open_dialog(self, alg: str, params: dict[str, Any]) -> bool:
        import processing

        self.dialog = processing.createAlgorithmDialog(f"pmtl:{alg}", {})
        self.dialog.setParameters(params)  # what the user types and picks
        self.dialog.resize(980, 720)
        self.dialog.show()
        self.dialog.algorithmFinished.connect(self.on_finished)
        return True

    def set_parameters(self, params: dict[str, Any]) -> bool:
        self.dialog.setParameters(params)
        return True

    def on_finished(self, successful: bool, results: dict[str, Any]) -> None:
        self.finished = (bool(successful), dict(results or {}))

    def press_run(self) -> bool:
        self.finished, self.started = None, time.monotonic()
        self.dialog.runButton().click()
        return True

    def wait_finished(self, alg: str, number: int) -> bool:
        elapsed = time.monotonic() - self.started
        self.dismiss_message_box()
        if self.finished is None and elapsed < RUN_TIMEOUT_S:
            return False
        ok, results = self.finished if self.finished is not None else (False, {"timeout": RUN_TIMEOUT_S})
        log = self.out / "logs" / f"{_slug(alg)}_{number}.txt"
        self.dialog.saveLogToFile(str(log), self.dialog.FormatPlainText)
        text = log.read_text(errors="replace") if log.is_file() else ""
        record = {"algorithm": alg, "run": number, "successful": ok, "seconds": round(elapsed, 1),
                  "results": {k: str(v) for k, v in results.items() if k not in ("CHILD_RESULTS", "CHILD_INPUTS")},
                  "log_tail": text.strip().splitlines()[-8:], "traceback_in_log": "Traceback" in text}  # fmt: skip
        record.update(self.check_outputs(alg, ok, results))
        self.runs.append(record)
        if alg == "detect_segment":
            self.save(self.iface.mainWindow(), f"detect_segment_run{number}_canvas")
        self.save(self.dialog, f"{_slug(alg)}_run{number}")
        return True

    def check_outputs(self, alg: str, ok: bool, results: dict[str, Any]) -> dict[str, Any]:
        """What a user would look at after the run; ``as_expected`` and a one-line ``note``."""
        if "cancel" in alg:
            return {"as_expected": not ok, "note": "cancelled: the dialog reports it as not completed, as QGIS does"}
        if alg == "wrong bands":
            return self.check_band_error(ok)
        if not ok:
            return {"as_expected": False, "note": f"failed: {results}"}
        if alg == "detect_segment":
            return self.check_styled_layers(results)
        missing = [str(v) for k, v in results.items() if k in ("OUTPUT", "FOLDER") and v and not Path(str(v)).exists()]
        return {"as_expected": not missing, "note": f"missing outputs {missing}" if missing else "outputs written"}

    def check_band_error(self, ok: bool) -> dict[str, Any]:
        """The NIR-R-G raster with the R-G-B model: refused, both band lists and the field named, no flag."""
        text = self.log_text()
        said = all(part in text for part in ("['nir', 'red', 'green']", "['red', 'green', 'blue']", "'Bands (model"))
        good = not ok and said and "--" not in text and "Traceback" not in text
        return {"as_expected": good, "note": f"refused: {not ok}; names both band lists and the field: {said}"}

    def check_styled_layers(self, results: dict[str, Any]) -> dict[str, Any]:
        """Both outputs loaded into the project and styled (the bug of issue 12: the second run lost its styler)."""
        from qgis.core import QgsProject

        wanted = {
            str(results.get("OUTPUT_RASTER")): "paletted",
            str(results.get("OUTPUT_DETECTIONS")): "categorizedSymbol",
        }
        newest: dict[str, str] = {}  # the second run loads the same files again: the last layer of each counts
        for layer in QgsProject.instance().mapLayers().values():
            source = layer.source().split("|")[0]
            if source in wanted and layer.renderer() is not None:
                newest[source] = layer.renderer().type()
        good = all(newest.get(path) == kind for path, kind in wanted.items())
        return {"as_expected": good, "note": f"loaded layers styled: {newest}", "styles": newest}

    def dismiss_message_box(self) -> None:
        """A refusal QGIS shows in a message box (checkParameterValues) ends the run: record it, press OK."""
        from qgis.PyQt.QtWidgets import QApplication, QMessageBox

        modal = QApplication.activeModalWidget()
        if isinstance(modal, QMessageBox):
            self.finished = (False, {"message box": modal.text()})
            modal.close()

    def log_text(self) -> str:
        """The dialog's log as the user reads it."""
        path = self.out / "logs" / "current.txt"
        self.dialog.saveLogToFile(str(path), self.dialog.FormatPlainText)
        return path.read_text(errors="replace")

    def progress(self) -> int:
        from qgis.PyQt.QtWidgets import QProgressBar

        bar = self.dialog.findChild(QProgressBar)
        return bar.value() if bar is not None else -1

    def wait_until(self, condition: Any, what: str) -> bool:
        """Poll ``condition`` while the algorithm runs (or until it ends); note when, and at what progress."""
        elapsed = time.monotonic() - self.started
        self.dismiss_message_box()
        if not condition() and self.finished is None and elapsed < RUN_TIMEOUT_S:
            return False
        self.cancel_at = {"seconds": round(elapsed, 1), "progress_percent": self.progress(), "when": what}
        return True

    def press_cancel(self) -> bool:
        self.dialog.cancelButton().click()
        return True

    def check_cancelled(self, expected_message: str) -> bool:
        """After cancel: no engine process left for the run, and the log says what was kept."""
        run = self.work / "runs" / "cancelled"
        alive = subprocess.run(["pgrep", "-f", str(run)], capture_output=True, text=True).stdout.split()
        record = self.runs[-1]
        said = expected_message in "\n".join(record["log_tail"])
        record.update(
            {
                "cancel_pressed": self.cancel_at,
                "engine_processes_left": alive,
                "run_folder": sorted(p.name for p in run.iterdir()) if run.is_dir() else [],
            }
        )
        record["as_expected"] = record["as_expected"] and not alive and said and not record["traceback_in_log"]
        record["note"] = (
            f"cancel pressed at {self.cancel_at['seconds']} s ({self.cancel_at['when']}, bar at "
            f"{self.cancel_at['progress_percent']} %); engine processes left: {alive or 'none'}; "
            f"log says {expected_message!r}: {said}; run folder: {record['run_folder']}"
        )
        return True

    def check_resumed(self, run: Path) -> bool:
        """Resume from the dialog finished the run: each of the four epochs once in metrics.jsonl."""
        record = self.runs[-1]
        epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines() if line]
        record["epochs_logged"] = epochs
        record["as_expected"] = record["successful"] and epochs == [1, 2, 3, 4]
        record["note"] = f"resumed from the dialog; epochs in metrics.jsonl: {epochs}"
        return True

    def close_dialog(self, alg: str) -> bool:
        self.dialog.close()
        self.dialog = None
        return True

    # ---------------------------------------------------------------- issue 20: batch, modeler, band check
    def batch_with_empty_outputs(self) -> list[Any]:
        """Detect and segment in the Batch Processing panel over two rasters, Class probabilities (under Advanced)
        and Class polygons left empty, as a user leaves them."""
        return [self.open_batch, self.run_batch, self.close_batch]

    def open_batch(self) -> bool:
        from processing.gui.BatchAlgorithmDialog import BatchAlgorithmDialog
        from processing.tools import dataobjects
        from qgis.core import QgsApplication

        algorithm = QgsApplication.processingRegistry().createAlgorithmById("pmtl:detect_segment")
        self.dialog = BatchAlgorithmDialog(algorithm, self.iface.mainWindow())
        panel, context = self.dialog.mainWidget(), dataobjects.createContext()
        panel.clear()
        for row, image in enumerate(sorted((self.work / "synth" / "top").glob("*.tif"))):
            panel.addRow()
            for name, value in (("INPUT", str(image)), ("MODEL", str(self.work / "model.onnx"))):
                panel.wrappers[row][panel.parameter_to_column[name]].setParameterValue(value, context)
            for name, suffix in (("OUTPUT_RASTER", "classes.tif"), ("OUTPUT_DETECTIONS", "detections.gpkg")):
                cell = panel.tblParameters.cellWidget(row + 1, panel.parameter_to_column[name])
                cell.setValue(str(self.work / "batch" / f"{image.stem}_{suffix}"))
        (self.work / "batch").mkdir(exist_ok=True)
        self.dialog.resize(1200, 560)
        self.dialog.show()
        self.save(self.dialog, "session_batch_panel")
        return True

    def run_batch(self) -> bool:
        self.started = time.monotonic()
        self.dialog.runButton().click()  # the batch dialog runs its rows before the click returns
        log = self.out / "logs" / "batch_detect_segment_1.txt"
        self.dialog.saveLogToFile(str(log), self.dialog.FormatPlainText)
        text = log.read_text(errors="replace")
        maps = sorted(p.name for p in (self.work / "batch").glob("*_classes.tif"))
        failed = "failed" in text.lower() or "Traceback" in text
        self.runs.append({"algorithm": "batch detect_segment", "run": 1, "successful": not failed,
                          "seconds": round(time.monotonic() - self.started, 1), "class_maps": maps,
                          "log_tail": text.strip().splitlines()[-8:], "as_expected": not failed and len(maps) == 2,
                          "note": f"2 rows, optional outputs empty: class maps {maps}"})  # fmt: skip
        self.save(self.dialog, "session_batch_done")
        return True

    def close_batch(self) -> bool:
        self.dialog.close()
        self.dialog = None
        return True

    def model_from_the_modeler(self) -> list[Any]:
        """The shipped pipeline model opened in the modeler (valid: no red box); the many-rasters model opened and
        run from the modeler's Run button over the session's two rasters."""
        return [
            lambda: self.open_modeler("pmtl_pipeline", "session_modeler_pipeline"),
            self.close_modeler,
            lambda: self.open_modeler("pmtl_detect_many_rasters", "session_modeler_many_rasters"),
            self.start_model_run,
            self.fill_model_dialog,
            lambda: self.wait_finished("modeler: detect over many rasters", 1),
            self.close_model_dialog,
            self.close_modeler,
        ]

    def open_modeler(self, name: str, screenshot: str) -> bool:
        """What *Processing → Graphical Modeler → Open Model…* does with the file the user picks."""
        from processing.modeler.ModelerDialog import ModelerDialog
        from qgis.core import QgsProcessingModelAlgorithm

        path = self.plugin_dir() / "vendor" / "models" / "examples" / f"{name}.model3"
        model = QgsProcessingModelAlgorithm()
        valid, issues = model.validate() if model.fromFile(str(path)) else (False, ["cannot be read"])
        if not valid:
            self.problems.append(f"{path.name} does not validate: {issues}")
        self.modeler = ModelerDialog.create()
        self.modeler.loadModel(str(path))
        self.modeler.resize(1240, 800)
        self.modeler.show()
        self.save(self.modeler, screenshot)
        return True

    def plugin_dir(self) -> Path:
        import pmtl_qgis

        return Path(pmtl_qgis.__file__).resolve().parent

    def start_model_run(self) -> bool:
        from qgis.PyQt.QtCore import QTimer

        QTimer.singleShot(0, self.modeler.runModel)  # its dialog is modal: this session keeps polling inside it
        return True

    def fill_model_dialog(self) -> bool:
        from processing.gui.AlgorithmDialog import AlgorithmDialog
        from qgis.PyQt.QtWidgets import QApplication

        modal = QApplication.activeModalWidget()
        if not isinstance(modal, AlgorithmDialog):
            return False
        self.dialog = modal
        images = [str(p) for p in sorted((self.work / "synth" / "top").glob("*.tif"))]
        self.dialog.setParameters({"RASTERS": images, "MODEL": str(self.work / "model.onnx"),
                                   "detect:class_map": str(self.work / "mosaic_classes.tif"),
                                   "detect:detections": str(self.work / "mosaic_detections.gpkg")})  # fmt: skip
        self.dialog.algorithmFinished.connect(self.on_finished)
        self.press_run()
        return True

    def close_model_dialog(self) -> bool:
        self.dialog.close()  # ends the modeler's exec_()
        self.dialog = None
        return True

    def close_modeler(self) -> bool:
        self.modeler.hide()  # hidden, not closed: no "save changes?" prompt for a model only run
        self.modeler = None
        return True

    def wrong_bands(self) -> list[Any]:
        """A NIR-R-G raster with an R-G-B model (the session's model with its band names changed): the run must
        stop with an error naming both band lists and the dialog's 'Bands (model order)' field."""
        rgb = self.work / "model_rgb.onnx"
        image = self.work / "synth" / "top" / "top_mosaic_09cm_area1.tif"
        params = {"INPUT": str(image), "MODEL": str(rgb), "OUTPUT_RASTER": str(self.work / "wrong_classes.tif"),
                  "OUTPUT_DETECTIONS": str(self.work / "wrong_detections.gpkg")}  # fmt: skip
        return [
            lambda: self.rgb_model(rgb),
            lambda: self.open_dialog("detect_segment", params),
            lambda: self.press_run(),
            lambda: self.wait_finished("wrong bands", 1),
            lambda: self.close_dialog("wrong bands"),
        ]

    def rgb_model(self, path: Path) -> bool:
        """The session's model, its metadata saying it was trained on bands red, green, blue (the venv's onnx
        package writes it)."""
        code = (
            "import json, sys, onnx\n"
            "model = onnx.load(sys.argv[1])\n"
            "rgb = ['red', 'green', 'blue']\n"
            "for prop in model.metadata_props:\n"
            "    if prop.key == 'input':\n"
            "        prop.value = json.dumps({**json.loads(prop.value), 'bands': rgb})\n"
            "    if prop.key == 'provenance':\n"  # the training datasets' bands: what the model was trained on
            "        value = json.loads(prop.value)\n"
            "        for dataset in (value.get('datasets') or {}).values():\n"
            "            dataset['bands'] = rgb\n"
            "        prop.value = json.dumps(value)\n"
            "onnx.save(model, sys.argv[2])\n"
        )
        python = REPO / ".venv" / "bin" / "python"
        subprocess.run([str(python), "-c", code, str(self.work / "model.onnx"), str(path)], check=True)
        return True

    # ---------------------------------------------------------------- ending
    def save(self, widget: Any, name: str) -> None:
        from qgis_desktop import grab

        grab(widget, self.out / f"{name}.png")

    def final_screenshot(self) -> bool:
        self.iface.mapCanvas().refreshAllLayers()
        self.save(self.iface.mainWindow(), "qgis_after_session")
        return True

    def write_report(self) -> bool:
        runs_ok = all(run["as_expected"] for run in self.runs)
        expected = {(item["alg"], n) for item in _plan(self.work, self.quick) for n in (1, 2)}
        expected |= {("batch detect_segment", 1), ("modeler: detect over many rasters", 1), ("wrong bands", 1)}
        missing = expected - {(run["algorithm"], run["run"]) for run in self.runs}
        if missing:
            self.problems.append(f"runs that never finished: {sorted(missing)}")
        report = {"as_expected": runs_ok and not self.problems, "runs": self.runs, "problems": self.problems}
        (self.out / "session.json").write_text(json.dumps(report, indent=1))
        return True

    def quit(self) -> None:
        from qgis_desktop import quit_qgis

        quit_qgis()


def inside_qgis() -> None:
    sys.path.insert(0, os.environ["PMTL_SCRIPTS"])  # this harness's own helpers (QGIS exec()s this file)
    from qgis_desktop import start_driver

    session = Session(Path(os.environ[INSIDE]), Path(os.environ["PMTL_SESSION_WORK"]), bool(os.environ.get(QUICK)))
    start_driver(session, session.poll)


if os.environ.get(INSIDE):
    inside_qgis()
elif __name__ == "__main__":
    from qgis_desktop import out_parser

    parser = out_parser(__doc__, REPO / "out" / "desktop")
    parser.add_argument("--quick", action="store_true", help="only the dialogs that make the model, then the routes")
    arguments = parser.parse_args()
    sys.exit(orchestrate(Path(arguments.out), arguments.quick))
