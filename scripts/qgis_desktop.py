"""QGIS desktop on a throwaway profile with the plugin installed from its zip, for the scripts that drive QGIS as a
user does (qgis_screenshots.py, qgis_desktop_session.py): outside QGIS :func:`run_in_fresh_qgis`; inside it (the
scripts find this module through ``$PMTL_SCRIPTS``) :func:`start_driver`, :func:`grab` and :func:`quit_qgis`."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def run_in_fresh_qgis(script: str, extra_env: Callable[[Path], dict[str, str]], timeout: float) -> int:
    """zip → new profile (engine Python = this venv) → ``qgis --code script`` under the current display; the work
    folder (profile, and whatever ``extra_env(work)`` puts there) is removed afterwards."""
    sys.path.insert(0, str(REPO / "scripts"))
    import package_plugin

    work = Path(tempfile.mkdtemp(prefix="pmtl_qgis_"))
    try:
        zip_path = package_plugin.build_zip(work / "pmtl_qgis.zip")
        package_plugin.install(zip_path, work / "profiles" / "default", REPO / ".venv" / "bin" / "python", enable=True)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PMTL_PYTHON", "QT_QPA_PLATFORM")}
        env.update({"XDG_RUNTIME_DIR": str(work), "PMTL_SCRIPTS": str(REPO / "scripts"), **extra_env(work)})
        command = ["qgis", "--profiles-path", str(work), "--nologo", "--noversioncheck", "--code", script]
        return subprocess.run(command, env=env, timeout=timeout).returncode
    finally:
        shutil.rmtree(work, ignore_errors=True)


def out_parser(doc: str, default_out: Path) -> argparse.ArgumentParser:
    """The command line of a script that drives QGIS: its docstring's first line, ``--out`` (its output folder)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", default=str(default_out))
    return parser


_DRIVERS: list[Any] = []
"""The objects driving QGIS, kept alive for their timers."""


def start_driver(driver: Any, first_step: Callable[[], None]) -> None:
    """Inside QGIS: keep ``driver`` alive and call ``first_step`` (one of its methods) once QGIS has settled (4 s);
    each step schedules the next on a timer, so the GUI paints between steps."""
    from qgis.PyQt.QtCore import QTimer

    _DRIVERS.append(driver)
    QTimer.singleShot(4000, first_step)


def grab(widget: Any, path: Path) -> None:
    """A widget as QGIS paints it, saved as a 256-colour PNG (small files)."""
    from qgis.PyQt.QtGui import QImage

    widget.grab().toImage().convertToFormat(QImage.Format_Indexed8).save(str(path))


def quit_qgis() -> None:
    """Leave QGIS without a save prompt (a throwaway profile: nothing to keep if QGIS lingers)."""
    from qgis.core import QgsProject
    from qgis.PyQt.QtCore import QTimer
    from qgis.PyQt.QtWidgets import QApplication

    project = QgsProject.instance()
    project.clear()  # layers removed while QGIS is whole: at exit, QGIS 3.22 crashed removing them (deleted docks)
    project.setDirty(False)
    QApplication.exit(0)
    QTimer.singleShot(5000, lambda: os._exit(0))
