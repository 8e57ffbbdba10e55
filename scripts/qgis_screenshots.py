"""Screenshots of the plugin in QGIS desktop, for the QGIS user guide in docs/GUIDE.md (docs/img/).

    xvfb-run -a -s "-screen 0 1280x860x24" .venv/bin/python scripts/qgis_screenshots.py --out docs/img

builds the plugin zip, installs it into a fresh QGIS profile (recording .venv/bin/python for torch and
onnxruntime), starts ``qgis`` with this file as its startup code, opens the Processing toolbox and every pmtl
algorithm's dialog as a user would, and saves each window with QGIS's own widget grab (PNG, 256 colours).
With ``--loop-model CKPT`` (a pmtl checkpoint trained on the synthetic Potsdam-like twin at 20 cm, e.g. the
``make demo`` map model's ``best.pt``) it then shoots the correct-and-retrain loop (scripts/qgis_loop_shots.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

INSIDE = "PMTL_SHOTS_OUT"
REPO = Path(__file__).resolve().parent.parent if "__file__" in globals() else Path(".")  # QGIS exec()s it: no __file__
DIALOGS = (
    "generate_synthetic",
    "chip_isprs",
    "chip_own_labels",
    "train",
    "export_onnx",
    "detect_segment",
    "evaluate",
    "render_map",
    "install_dependencies",
)


def _ortho(path: Path) -> Path:
    """A small synthetic Vaihingen-like ortho to show in the map and to pick in the detect dialog."""
    subprocess.run(
        [sys.executable, "-m", "engine.synth", "--domain", "vaihingen", "--out", str(path), "--seed", "0",
         "--tiles", "1", "--tile-size-m", "40"],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    return next(path.rglob("top/*.tif"))


def orchestrate(out: Path, loop_model: Path | None) -> int:
    """Outside QGIS: the screenshots taken in a fresh QGIS (with the loop's when ``loop_model`` is given)."""
    sys.path[:0] = [str(REPO / "scripts"), str(REPO)]  # this script's helpers, the engine (the loop's model)
    from qgis_desktop import run_in_fresh_qgis
    from qgis_loop_shots import prepare

    out.mkdir(parents=True, exist_ok=True)

    def extra_env(work: Path) -> dict[str, str]:
        env = {INSIDE: str(out.resolve()), "PMTL_SHOTS_ORTHO": str(_ortho(work / "synth"))}
        return {**env, **(prepare(loop_model, work / "loop") if loop_model else {})}

    return run_in_fresh_qgis(__file__, extra_env, timeout=1200 if loop_model else 240)


class Shooter:
    """Inside QGIS: one step per timer tick (the GUI paints between steps)."""

    def __init__(self, out: Path) -> None:
        from qgis.utils import iface

        self.iface, self.out = iface, out
        self.steps = [self.load_ortho, self.toolbox, self.open_plugin_menu, self.save_plugin_menu]
        for alg in DIALOGS:
            self.steps += [lambda alg=alg: self.open_dialog(alg), lambda alg=alg: self.save_dialog(alg)]
        if os.environ.get("PMTL_LOOP_MODEL"):
            from qgis_loop_shots import LoopSteps

            self.steps += LoopSteps(iface, out, dict(os.environ)).steps()
        self.steps.append(self.quit)
        self.dialog = None

    def next(self) -> None:
        from qgis.PyQt.QtCore import QTimer

        step = self.steps.pop(0)
        try:
            step()
        except Exception as exc:  # a failed step must not leave QGIS running under the virtual display
            print(f"screenshot step failed: {exc!r}", file=sys.stderr)
        if self.steps:
            QTimer.singleShot(2500, self.next)

    def save(self, widget, name: str) -> None:
        from qgis_desktop import grab

        grab(widget, self.out / f"{name}.png")

    def load_ortho(self) -> None:
        layer = self.iface.addRasterLayer(os.environ["PMTL_SHOTS_ORTHO"], "ortho (NIR-R-G)")
        self.iface.mapCanvas().setExtent(layer.extent())

    def toolbox(self) -> None:
        from qgis.PyQt.QtWidgets import QDockWidget

        main = self.iface.mainWindow()
        main.move(0, 0)
        main.resize(1280, 820)
        dock = main.findChild(QDockWidget, "ProcessingToolbox")
        dock.show()
        dock.searchBox.setText("pmtl")
        self.iface.mapCanvas().refreshAllLayers()
        from qgis.PyQt.QtCore import QTimer

        QTimer.singleShot(1500, lambda: self.save(main, "qgis_toolbox"))

    def open_plugin_menu(self) -> None:
        """Plugins › pmtl, opened as a user would: the installer's menu entry."""
        from qgis.PyQt.QtCore import QTimer

        menu = self.iface.pluginMenu()
        pmtl = next(a for a in menu.actions() if a.text().replace("&", "") == "pmtl")
        print("pmtl menu entries:", [a.text() for a in pmtl.menu().actions()], file=sys.stderr)
        bar = self.iface.mainWindow().menuBar()
        plugins = next(a for a in bar.actions() if a.menu() is menu)
        menu.popup(bar.mapToGlobal(bar.actionGeometry(plugins).bottomLeft()))
        menu.setActiveAction(pmtl)

        def submenu() -> None:
            pmtl.menu().popup(menu.mapToGlobal(menu.actionGeometry(pmtl).topRight()))

        QTimer.singleShot(600, submenu)

    def save_plugin_menu(self) -> None:
        from qgis.PyQt.QtWidgets import QApplication

        screen = QApplication.primaryScreen().grabWindow(0, 0, 0, 900, 180)
        screen.toImage().convertToFormat(screen.toImage().Format_Indexed8).save(str(self.out / "plugins_menu.png"))
        for widget in QApplication.topLevelWidgets():
            if widget.isVisible() and widget.inherits("QMenu"):
                widget.close()

    def open_dialog(self, alg: str) -> None:
        import processing
        from qgis.core import QgsProject

        parameters = {}
        if alg in ("detect_segment", "render_map"):
            layers = QgsProject.instance().mapLayersByName("ortho (NIR-R-G)")
            parameters = {"INPUT": layers[0].id()} if layers else {}
        self.dialog = processing.createAlgorithmDialog(f"pmtl:{alg}", parameters)
        self.dialog.resize(980, 720)
        self.dialog.show()

    def save_dialog(self, alg: str) -> None:
        self.save(self.dialog, f"dialog_{alg}")
        self.dialog.close()
        self.dialog = None

    def quit(self) -> None:
        from qgis_desktop import quit_qgis

        quit_qgis()


def inside_qgis() -> None:
    sys.path.insert(0, os.environ["PMTL_SCRIPTS"])  # this harness's own helpers (QGIS exec()s this file)
    from qgis_desktop import start_driver

    shooter = Shooter(Path(os.environ[INSIDE]))
    start_driver(shooter, shooter.next)


if os.environ.get(INSIDE):
    inside_qgis()
elif __name__ == "__main__":
    from qgis_desktop import out_parser

    parser = out_parser(__doc__, REPO / "docs" / "img")
    parser.add_argument("--loop-model", type=Path, help="checkpoint for the correct-and-retrain loop's pictures")
    args = parser.parse_args()
    sys.exit(orchestrate(Path(args.out), args.loop_model))
