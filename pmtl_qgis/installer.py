"""Install pmtl's Python dependencies for QGIS users: pip, run by QGIS's own Python, into a folder the plugin manages.

The folder is ``<QGIS profile>/pmtl/python<X.Y>`` (one per Python version: wheels are built per version). It is
added at the END of ``sys.path`` (:func:`managed_paths`, read by ``environment.find_python_env``), so QGIS's own
numpy and GDAL bindings always win over anything in it. Only what QGIS's Python lacks is installed: each round
installs the missing requirements with ``--no-deps`` and then looks at what they require, so the numpy that QGIS's
GDAL bindings were built against is kept and never downloaded again.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # QGIS builds without 'packaging': pip carries a copy
    try:
        from pip._vendor.packaging.requirements import Requirement
    except ImportError:  # neither: the plugin still loads; install() says what is missing
        Requirement = None

PIP_PINS: dict[str, str] = {"torch": "torch==2.14.1", "torchvision": "torchvision==0.29.1"}
"""Versions the engine is tested with (the same pins as requirements.txt)."""

PROFILES: dict[str, tuple[str, ...]] = {
    "inference": ("onnxruntime", "jsonschema"),
    "training": (
        "onnxruntime",
        "jsonschema",
        PIP_PINS["torch"],
        PIP_PINS["torchvision"],
        "onnx",
        "onnxscript",
        "PyYAML",
        "tqdm",
        "scipy",
        "matplotlib",
        "distributed",  # the region job's Dask workers (distributed requires dask)
    ),
}
"""What each profile installs besides numpy (see :func:`numpy_requirement`)."""

MAX_ROUNDS = 12
"""Dependency rounds before giving up (torch's tree is 4 deep)."""


class InstallError(RuntimeError):
    """The installation cannot run or failed; the message says why and what to do."""


class InstallCancelled(InstallError):
    """The user cancelled; pip was stopped and the folder holds only what earlier rounds installed completely."""


@dataclass
class InstallResult:
    folder: Path
    installed: list[str] = field(default_factory=list)
    already_there: list[str] = field(default_factory=list)


def _version_tag() -> str:
    return f"python{sys.version_info.major}.{sys.version_info.minor}"


def profile_dir() -> Path | None:
    """The active QGIS profile folder, when QGIS runs."""
    try:
        from qgis.core import QgsApplication
    except ImportError:
        return None
    path = QgsApplication.qgisSettingsDirPath()
    return Path(path) if path else None


def managed_dir(profile: Path | None = None) -> Path | None:
    """``<profile>/pmtl/python<X.Y>``: where the installer puts packages for this Python version."""
    profile = profile if profile is not None else profile_dir()
    return None if profile is None else profile / "pmtl" / _version_tag()


def managed_paths() -> list[Path]:
    """The managed folder when something was installed there (for the end of ``sys.path``)."""
    folder = managed_dir()
    if folder is not None and folder.is_dir() and any(folder.iterdir()):
        return [folder]
    return []


def numpy_requirement() -> str:
    """numpy as QGIS's GDAL bindings need it: the installed major version (1.x bindings break with numpy 2)."""
    try:
        major = int(metadata.version("numpy").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        return "numpy<2"
    return f"numpy>={major},<{major + 1}"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _find_distribution(name: str, search: list[str]) -> metadata.Distribution | None:
    wanted = _canonical(name)
    for dist in metadata.distributions(path=search):
        if _canonical(dist.metadata["Name"] or "") == wanted:
            return dist
    return None


def is_satisfied(requirement: Requirement, search: list[str]) -> bool:
    """A distribution on ``search`` (QGIS's sys.path + the managed folder) with a version the requirement allows."""
    dist = _find_distribution(requirement.name, search)
    return dist is not None and requirement.specifier.contains(dist.version, prereleases=True)


def dependencies(names: Iterable[str], folder: Path) -> list[Requirement]:
    """Requirements of the distributions ``names`` installed in ``folder`` that apply here (markers evaluated for
    this Python, optional extras left out)."""
    found: list[Requirement] = []
    for name in names:
        dist = _find_distribution(name, [str(folder)])
        for text in (dist.requires or []) if dist is not None else []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                found.append(requirement)
    return found


def qgis_python() -> Path:
    """The interpreter of QGIS's Python (QGIS's own executable is not it), of the same version as this process."""
    tag = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = []
    if Path(sys.executable).name.lower().startswith("python"):
        candidates.append(Path(sys.executable))
    for base in dict.fromkeys((sys.exec_prefix, sys.base_exec_prefix)):
        candidates += [Path(base) / "python.exe", Path(base) / "bin" / f"python{tag}", Path(base) / "bin" / "python3"]
    for name in (f"python{tag}", "python3"):
        found = shutil.which(name)
        if found:
            candidates.append(Path(found))
    for candidate in dict.fromkeys(candidates):
        if candidate.is_file() and _python_version(candidate) == tag:
            return candidate
    raise InstallError(
        f"QGIS's Python {tag} interpreter was not found (looked at {[str(c) for c in dict.fromkeys(candidates)]})"
    )


def _python_version(python: Path) -> str:
    try:
        done = subprocess.run(
            [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
            **_no_window(),
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def _no_window() -> dict:
    """No console window flashing up on Windows for pip (QGIS is a GUI application)."""
    return {"creationflags": subprocess.CREATE_NO_WINDOW} if os.name == "nt" else {}


def _reader(stream, lines: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line.rstrip())
    lines.put(None)


def run_pip(python: Path, args: list[str], report: Callable[[str], None], is_canceled: Callable[[], bool]) -> list[str]:
    """Run ``python -m pip ARGS``, passing every output line to ``report``; stop it when ``is_canceled()``."""
    command = [str(python), "-m", "pip", *args]
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONUNBUFFERED="1", PIP_NO_INPUT="1")
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        **_no_window(),
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(process.stdout, lines), daemon=True).start()
    output: list[str] = []
    while True:
        if is_canceled():
            _stop(process)
            raise InstallCancelled("installation cancelled: pip was stopped; nothing half-installed was kept")
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        if line is None:
            break
        output.append(line)
        report(line)
    code = process.wait()
    if code != 0:
        errors = [line for line in output if "error" in line.lower()] or output[-1:]
        raise InstallError(f"pip failed (exit code {code}) for {' '.join(args[-8:])}: {' | '.join(errors[-3:])}")
    return output


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def install(
    profile: str,
    folder: Path,
    *,
    python: Path | None = None,
    report: Callable[[str], None] = print,
    progress: Callable[[float], None] = lambda fraction: None,
    is_canceled: Callable[[], bool] = lambda: False,
    extra_pip_args: Iterable[str] = (),
) -> InstallResult:
    """Install the profile's missing packages (and theirs) into ``folder``; see the module docstring."""
    if profile not in PROFILES:
        raise InstallError(f"profile {profile!r}: expected one of {list(PROFILES)}")
    if Requirement is None:
        raise InstallError("QGIS's Python has neither 'packaging' nor pip: install pip first (python -m ensurepip)")
    python = python or qgis_python()
    folder.mkdir(parents=True, exist_ok=True)
    search = [p for p in sys.path if p] + [str(folder)]
    result = InstallResult(folder)
    pending = [Requirement(text) for text in (*PROFILES[profile], numpy_requirement())]
    seen: set[str] = set()
    for round_number in range(MAX_ROUNDS):
        todo = []
        for requirement in pending:
            key = _canonical(requirement.name)
            if key in seen:
                continue
            seen.add(key)
            if is_satisfied(requirement, search):
                result.already_there.append(str(requirement))
            else:
                todo.append(requirement)
        if not todo:
            break
        report(f"round {round_number + 1}: installing {', '.join(str(r) for r in todo)} into {folder}")
        args = ["install", "--target", str(folder), "--upgrade", "--no-deps", "--progress-bar", "off"]
        run_pip(python, [*args, *extra_pip_args, *(str(r) for r in todo)], report, is_canceled)
        result.installed += [str(r) for r in todo]
        progress(min(0.95, (round_number + 1) / (round_number + 2)))
        pending = dependencies([r.name for r in todo], folder)
    else:
        raise InstallError(f"dependencies still missing after {MAX_ROUNDS} rounds: {[str(r) for r in pending]}")
    progress(1.0)
    return result
