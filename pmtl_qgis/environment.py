"""Find the pmtl engine and the Python environment that holds torch / onnxruntime, and say what to install.

QGIS runs its own Python (the system one on Linux), which usually has GDAL and numpy but not torch. pmtl keeps
its heavy dependencies in a separate environment (a venv made with ``--system-site-packages``) and adds that
environment's ``site-packages`` to ``sys.path`` only while one of its algorithms runs
(:func:`engine_paths`). The environment is found, first match wins, from:

1. the ``PMTL_PYTHON`` environment variable: path to that environment's Python interpreter;
2. the Processing setting *pmtl → Python interpreter* (Settings › Options › Processing › Providers);
3. ``environment.json`` in the plugin folder, written by ``scripts/package_plugin.py --install``;
4. a ``.venv`` next to the engine (a pmtl checkout after ``make setup``);
5. QGIS's own Python (everything installed there).

Whichever wins, the folder filled by the *Install Python dependencies* algorithm (``installer.managed_dir``: in the
QGIS profile) is searched too, last: QGIS's own packages and the environment above take precedence.

The engine itself comes from ``vendor/`` in the plugin folder (the packaged zip) or from the checkout that
contains the plugin folder.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent
ENV_VAR = "PMTL_PYTHON"
SETTING_NAME = "PMTL_PYTHON"
SETTING_KEY = f"Processing/Configuration/{SETTING_NAME}"
INSTALL_RECORD = PLUGIN_DIR / "environment.json"

PIP_NAMES: dict[str, str] = {
    "torch": "torch==2.14.1",
    "torchvision": "torchvision==0.29.1",
    "onnxruntime": "onnxruntime",
    "onnx": "onnx",
    "onnxscript": "onnxscript",
    "numpy": '"numpy<2"',
    "scipy": "scipy",
    "yaml": "PyYAML",
    "tqdm": "tqdm",
    "jsonschema": "jsonschema",
    "matplotlib": "matplotlib",
    "distributed": '"dask[distributed]"',
}
"""pip requirement for each importable module name (numpy<2: Debian's GDAL bindings are built against numpy 1)."""

SYSTEM_PACKAGES: dict[str, str] = {"osgeo": "GDAL's Python bindings (Debian/Ubuntu: apt install python3-gdal)"}
"""Modules that come from the system, not from pip."""


@dataclass
class PythonEnv:
    """Where pmtl's Python dependencies live, and how that was decided."""

    python: Path | None
    site_packages: list[Path] = field(default_factory=list)
    source: str = "QGIS's Python"
    problem: str | None = None


def engine_root() -> Path | None:
    """The folder that contains the ``engine`` package: ``vendor/`` (packaged plugin) or the checkout."""
    for candidate in (PLUGIN_DIR / "vendor", PLUGIN_DIR.parent):
        if (candidate / "engine" / "__init__.py").is_file():
            return candidate
    return None


def requirements_file() -> Path | None:
    """The pinned requirements shipped with the engine (for the install message)."""
    root = engine_root()
    if root is not None and (root / "requirements.txt").is_file():
        return root / "requirements.txt"
    return None


def _setting_value() -> str:
    try:
        from qgis.core import QgsSettings
    except ImportError:
        return ""
    value = QgsSettings().value(SETTING_KEY, "")
    return str(value or "").strip()


def _recorded_python() -> str:
    try:
        data = json.loads(INSTALL_RECORD.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return str(data.get("python", "")).strip() if isinstance(data, dict) else ""


def site_packages_of(python: Path) -> tuple[list[Path], str | None]:
    """The site-packages folders of the environment owning ``python`` for QGIS's Python version, or a problem."""
    prefix = python.parent.parent
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [
        prefix / "lib" / version / "site-packages",
        prefix / "lib64" / version / "site-packages",
        prefix / "Lib" / "site-packages",
    ]
    found: list[Path] = []
    for path in candidates:
        if path.is_dir() and all(path.resolve() != seen.resolve() for seen in found):
            found.append(path)  # lib64 is often a link to lib
    if found:
        return found, None
    others = sorted(p.parent.name for p in prefix.glob("lib*/python3*/site-packages"))
    if others:
        return [], (
            f"{python} is a Python environment for {', '.join(others)}, but QGIS runs {version}: "
            f"create it with QGIS's Python ({_qgis_python()} -m venv --system-site-packages DIR)"
        )
    return [], f"no site-packages folder under {prefix} (expected {candidates[0]})"


def _qgis_python() -> str:
    if Path(sys.executable).name.startswith("python"):
        return sys.executable
    return shutil.which("python3") or "python3"


def find_python_env() -> PythonEnv:
    """Decide which Python environment holds torch & co (see the module docstring for the order); the installer's
    managed folder comes last in its ``site_packages``."""
    from .installer import managed_paths

    env = _find_python_env()
    env.site_packages += [p for p in managed_paths() if p not in env.site_packages]
    return env


def _find_python_env() -> PythonEnv:
    root = engine_root()
    choices = [
        (os.environ.get(ENV_VAR, "").strip(), f"the {ENV_VAR} environment variable"),
        (_setting_value(), "the Processing setting 'pmtl → Python interpreter'"),
        (_recorded_python(), f"{INSTALL_RECORD.name} written at install time"),
    ]
    if root is not None:
        for name in ("bin/python", "Scripts/python.exe"):
            venv_python = root / ".venv" / name
            if venv_python.exists():
                choices.append((str(venv_python), f"the .venv next to the engine ({root})"))
    for value, source in choices:
        if not value:
            continue
        python = Path(value).expanduser()
        if not python.exists():
            return PythonEnv(None, [], source, f"{source} points to {python}, which does not exist")
        site_packages, problem = site_packages_of(python)
        return PythonEnv(python, site_packages, source, problem)
    return PythonEnv(Path(_qgis_python()), [], "QGIS's Python", None)


@contextlib.contextmanager
def engine_paths() -> Iterator[PythonEnv]:
    """``sys.path`` with the engine (first: the name ``engine`` must be ours) and the dependency environment (last:
    QGIS's own numpy and GDAL bindings win) for the duration of a call; restored exactly afterwards, so other
    plugins never import from pmtl's environment. Modules imported meanwhile stay loaded."""
    saved = list(sys.path)
    env = find_python_env()
    root = engine_root()
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    for path in env.site_packages:
        if str(path) not in sys.path:
            sys.path.append(str(path))
    importlib.invalidate_caches()
    try:
        yield env
    finally:
        sys.path[:] = saved


def subprocess_environment(env: PythonEnv) -> dict[str, str]:
    """Environment variables for an engine subprocess: the engine and site-packages on PYTHONPATH, no tqdm bars."""
    result = dict(os.environ)
    root = engine_root()
    extra = ([str(root)] if root is not None else []) + [str(p) for p in env.site_packages]
    if result.get("PYTHONPATH"):
        extra.append(result["PYTHONPATH"])
    result["PYTHONPATH"] = os.pathsep.join(extra)
    result["PYTHONUNBUFFERED"] = "1"
    result["TQDM_DISABLE"] = "1"
    result["PMTL_PROGRESS"] = "jsonl"
    return result


def missing_modules(modules: tuple[str, ...] | list[str]) -> list[str]:
    """Top-level modules among ``modules`` that cannot be found (without importing them: cheap)."""
    missing: list[str] = []
    with engine_paths():
        for name in modules:
            top = name.split(".")[0]
            try:
                found = importlib.util.find_spec(name) is not None
            except (ImportError, ValueError):
                found = False
            if not found and top not in missing:
                missing.append(top)
    return missing


def install_message(missing: list[str]) -> str:
    """Exactly what to install and how to tell pmtl where it is, for the missing top-level modules."""
    env = find_python_env()
    if "engine" in missing:
        return (
            f"The pmtl engine (Python package 'engine') was not found next to the plugin ({PLUGIN_DIR}/vendor or "
            f"{PLUGIN_DIR.parent}). Reinstall the plugin from the zip built by scripts/package_plugin.py."
        )
    system = [SYSTEM_PACKAGES[m] for m in missing if m in SYSTEM_PACKAGES]
    pip = [PIP_NAMES.get(m, m) for m in missing if m not in SYSTEM_PACKAGES]
    lines = [f"pmtl needs Python modules that cannot be imported: {', '.join(missing)}."]
    if not system:
        lines.append(
            "Easiest: run Processing › pmtl › Setup › 'Install Python dependencies' (or Plugins › pmtl › Install "
            "Python dependencies…), profile 'inference' to run models, 'training' to train them. Or by hand:"
        )
    if env.problem:
        lines.append(f"Python environment from {env.source}: {env.problem}.")
    if system:
        lines.append("Install " + "; ".join(system) + ".")
    if pip:
        req = requirements_file()
        reqs = f"-r {req}" if req is not None else " ".join(pip)
        target = env.python if env.source != "QGIS's Python" and env.python else Path("~/pmtl-venv/bin/python")
        venv = target.parent.parent
        lines.append(
            f"Install them into a virtual environment that sees QGIS's packages:\n"
            f"  {_qgis_python()} -m venv --system-site-packages {venv}\n"
            f"  {venv}/bin/pip install {reqs}\n"
            f"then set {ENV_VAR}={target} (environment variable, or Settings › Options › Processing › Providers "
            f"› pmtl › Python interpreter) and restart QGIS. In a pmtl checkout `make setup` creates .venv, "
            f"which is found automatically."
        )
    return "\n".join(lines)
