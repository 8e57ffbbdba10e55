"""The dependency installer (pmtl:install_dependencies): dependency rounds, pip's output, cancel, errors, and, for
real, the inference profile installed from the package registry into a fresh QGIS profile, after which
detect_segment runs in QGIS's own Python (which has no onnxruntime of its own)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from qgis_helpers import installed_plugin_env, qgis_process, write_geotiff

from pmtl_qgis import installer

pytestmark = pytest.mark.qgis
SYSTEM_PYTHON = Path("/usr/bin/python3")


def write_dist(folder: Path, name: str, version: str, requires: list[str]) -> None:
    info = folder / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_dependency_rounds_follow_markers_and_what_is_installed(tmp_path):
    write_dist(
        tmp_path, "alpha", "1.0", ["beta>=2", 'gamma; extra == "fast"', 'delta; python_version < "3"', "numpy>=1.20"]
    )
    write_dist(tmp_path, "beta", "1.5", [])
    deps = installer.dependencies(["alpha"], tmp_path)
    assert [str(d) for d in deps] == ["beta>=2", "numpy>=1.20"]  # extras and other Pythons' markers left out
    search = [str(tmp_path)]
    assert not installer.is_satisfied(deps[0], search)  # beta 1.5 < 2
    assert installer.is_satisfied(installer.Requirement("beta<2"), search)
    assert installer.is_satisfied(installer.Requirement("numpy>=1.20"), sys.path)  # QGIS's numpy counts
    assert (
        installer.numpy_requirement()
        == f"numpy>={np.__version__.split('.')[0]},<{int(np.__version__.split('.')[0]) + 1}"
    )


def fake_python(tmp_path: Path, script: str) -> Path:
    """An executable standing in for 'python -m pip …' (it ignores its arguments)."""
    path = tmp_path / "fakepython"
    path.write_text("#!/bin/sh\n" + script, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_nothing_to_install_runs_no_pip(tmp_path):
    # this venv has onnxruntime, jsonschema and numpy: the inference profile is satisfied, pip is never started
    result = installer.install("inference", tmp_path / "deps", python=Path("/nonexistent/python"))
    assert result.installed == [] and {r.split(">")[0].split("<")[0] for r in result.already_there} >= {"onnxruntime"}


def test_pip_output_cancel_and_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(installer, "is_satisfied", lambda requirement, search: False)
    lines: list[str] = []
    endless = fake_python(tmp_path, 'while true; do echo "Collecting onnxruntime"; sleep 0.05; done\n')
    start = time.monotonic()
    with pytest.raises(installer.InstallCancelled, match="cancelled"):
        installer.install("inference", tmp_path / "a", python=endless, report=lines.append,
                          is_canceled=lambda: len(lines) >= 4)  # fmt: skip
    assert time.monotonic() - start < 10 and "Collecting onnxruntime" in lines
    failing = fake_python(tmp_path, 'echo "ERROR: No matching distribution found for onnxruntime"; exit 1\n')
    with pytest.raises(installer.InstallError, match=r"pip failed \(exit code 1\).*No matching distribution"):
        installer.install("inference", tmp_path / "b", python=failing, report=lines.append)
    with pytest.raises(installer.InstallError, match="profile 'gpu'"):
        installer.install("gpu", tmp_path / "c")


def registry_reachable() -> str | None:
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    try:
        urllib.request.urlopen(f"{index}/onnxruntime/", timeout=15).close()
    except OSError as exc:
        return f"package registry {index} unreachable ({exc})"
    return None


@pytest.mark.slow
def test_inference_profile_from_the_registry_then_detect_segment(tmp_path):
    unreachable = registry_reachable()
    if unreachable:
        pytest.skip(unreachable)
    if not SYSTEM_PYTHON.exists() or subprocess.run([SYSTEM_PYTHON, "-c", "import onnxruntime"]).returncode == 0:
        pytest.skip("needs QGIS's Python without onnxruntime of its own")
    from testmodels import ColourSegmenter, isprs_description

    from engine.export import export_onnx

    model = tmp_path / "model.onnx"
    export_onnx(ColourSegmenter().eval(), model, isprs_description(), 64, overlap=16)
    image = np.kron(np.random.default_rng(0).integers(0, 256, (3, 4, 4)), np.ones((16, 16), np.int64)).astype(np.uint8)
    ortho = write_geotiff(tmp_path / "ortho.tif", image)
    env = installed_plugin_env(tmp_path, None)  # the zip in a fresh profile, QGIS's own Python: no onnxruntime
    detect = ["run", "pmtl:detect_segment", "--", f"INPUT={ortho}", f"MODEL={model}"]
    detect += [f"OUTPUT_RASTER={tmp_path / 'classes.tif'}", f"OUTPUT_DETECTIONS={tmp_path / 'dets.gpkg'}"]

    done = qgis_process(["run", "pmtl:install_dependencies", "--json", "--", "PROFILE=0"], env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(done.stdout)["results"]
    folder = Path(results["FOLDER"])
    profile = Path(env["XDG_DATA_HOME"]) / "QGIS" / "QGIS3" / "profiles" / "default"
    assert folder == profile / "pmtl" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert (folder / "onnxruntime").is_dir() and "onnxruntime" in results["INSTALLED"]
    assert not (folder / "numpy").exists()  # QGIS's numpy (what its GDAL is built against) is kept
    assert "Successfully installed" in done.stdout + done.stderr  # pip's own output reached the log

    after = qgis_process(detect, env)
    assert after.returncode == 0, after.stdout[-3000:] + after.stderr[-3000:]
    assert (tmp_path / "classes.tif").exists()
    # nothing outside the plugin finds the folder: no environment variable, no change to QGIS's Python
    assert subprocess.run([SYSTEM_PYTHON, "-c", "import onnxruntime"], env={**env, "PYTHONPATH": ""}).returncode != 0


def test_managed_folder_is_searched_last(tmp_path, monkeypatch):
    from pmtl_qgis import environment

    folder = tmp_path / "pmtl" / "python3.x"
    folder.mkdir(parents=True)
    (folder / "marker.py").write_text("", encoding="utf-8")
    monkeypatch.setattr(installer, "managed_dir", lambda profile=None: folder)
    monkeypatch.setattr(sys, "path", list(sys.path))
    env = environment.find_python_env()
    assert env.site_packages[-1] == folder
    with environment.engine_paths():
        assert sys.path[-1] == str(folder)  # appended: QGIS's own numpy / GDAL bindings are found first
    assert str(folder) not in sys.path  # and only while pmtl runs
    assert str(folder) in environment.subprocess_environment(env)["PYTHONPATH"].split(os.pathsep)
