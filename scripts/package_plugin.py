"""Build the installable QGIS plugin zip (plugin + bundled engine) and optionally install it into a QGIS profile.

    python scripts/package_plugin.py                      # → dist/pmtl_qgis.zip
    python scripts/package_plugin.py --install            # + unzip into the default profile, enable, remember .venv
    python scripts/package_plugin.py --install --profile-dir DIR --python /path/to/venv/bin/python

Zip layout (what QGIS's "Install from ZIP" expects): ``pmtl_qgis/`` with ``metadata.txt`` and the plugin modules,
plus ``pmtl_qgis/vendor/`` holding ``engine/``, the configs of ``models/`` and ``requirements.txt`` (the install
message points at it). ``--install`` also writes ``pmtl_qgis/environment.json`` naming the Python environment that
has torch, so the installed plugin finds it without any setting, and marks the plugin enabled in the profile.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLUGIN = "pmtl_qgis"
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache"}
SKIP_SUFFIXES = {".pyc", ".pyo", ".pt", ".pth", ".onnx"}
MODEL_SUFFIXES = {".yaml", ".yml", ".json", ".model3"}


def _files(folder: Path, suffixes: set[str] | None = None) -> list[Path]:
    """Files under ``folder`` to ship: no caches, no weights; only ``suffixes`` when given."""
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or SKIP_DIRS.intersection(path.relative_to(folder).parts):
            continue
        if path.suffix in SKIP_SUFFIXES or (suffixes is not None and path.suffix not in suffixes):
            continue
        if path.parent.name == PLUGIN and path.name in ("environment.json", "metadata.txt"):
            continue  # an install record belongs to one machine; metadata.txt is a link to the repo root's
        found.append(path)
    return found


def zip_entries(repo: Path = REPO) -> list[tuple[Path, str]]:
    """(source file, name in the zip) for every file of the plugin zip."""
    entries = [(path, f"{PLUGIN}/{path.relative_to(repo / PLUGIN).as_posix()}") for path in _files(repo / PLUGIN)]
    entries.append((repo / "metadata.txt", f"{PLUGIN}/metadata.txt"))
    for path in _files(repo / "engine"):
        entries.append((path, f"{PLUGIN}/vendor/engine/{path.relative_to(repo / 'engine').as_posix()}"))
    if (repo / "models").is_dir():
        for path in _files(repo / "models", MODEL_SUFFIXES):
            entries.append((path, f"{PLUGIN}/vendor/models/{path.relative_to(repo / 'models').as_posix()}"))
    for name in ("requirements.txt", "LICENSE", "README.md"):
        if (repo / name).is_file():
            entries.append(
                (repo / name, f"{PLUGIN}/vendor/{name}" if name == "requirements.txt" else f"{PLUGIN}/{name}")
            )
    return entries


def build_zip(out: Path, repo: Path = REPO) -> Path:
    """Write the plugin zip atomically (temporary name, then rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for source, name in zip_entries(repo):
            archive.write(source, name)
    os.replace(tmp, out)
    return out


def default_profile_dir() -> Path:
    """The 'default' QGIS 3 profile of this user (Linux/XDG, macOS, Windows)."""
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "QGIS" / "QGIS3" / "profiles" / "default"


def install(zip_path: Path, profile_dir: Path, python: Path | None, enable: bool = True) -> Path:
    """Unzip into ``PROFILE/python/plugins`` (replacing an older copy), record ``python``, enable the plugin."""
    plugins = profile_dir / "python" / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    target = plugins / PLUGIN
    if target.exists():
        shutil.rmtree(target)
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(plugins)
    if python is not None:
        (target / "environment.json").write_text(json.dumps({"python": str(python)}, indent=1) + "\n", encoding="utf-8")
    if enable:
        _enable(profile_dir)
    return target


def _enable(profile_dir: Path) -> None:
    """Set ``PythonPlugins/pmtl_qgis=true`` in the profile's QGIS3.ini (what the Plugin Manager does)."""
    try:
        from qgis.PyQt.QtCore import QSettings
    except ImportError:
        print("note: PyQt not importable here; enable the plugin in QGIS's Plugin Manager", file=sys.stderr)
        return
    ini = profile_dir / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    settings = QSettings(str(ini), QSettings.IniFormat)
    settings.setValue(f"PythonPlugins/{PLUGIN}", True)
    settings.sync()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist" / f"{PLUGIN}.zip", help="zip to write")
    parser.add_argument("--install", action="store_true", help="also install the zip into a QGIS profile")
    parser.add_argument("--profile-dir", type=Path, default=None, help="QGIS profile folder (default: 'default')")
    parser.add_argument(
        "--python",
        type=Path,
        default=None,
        help="interpreter of the environment with torch (default: this repo's .venv/bin/python if present)",
    )
    parser.add_argument("--no-enable", action="store_true", help="install without enabling the plugin")
    args = parser.parse_args(argv)
    zip_path = build_zip(args.out)
    print(f"plugin zip: {zip_path} ({zip_path.stat().st_size / 1e6:.2f} MB)")
    if args.install:
        python = args.python
        if python is None and (REPO / ".venv" / "bin" / "python").exists():
            python = REPO / ".venv" / "bin" / "python"
        profile = args.profile_dir or default_profile_dir()
        target = install(zip_path, profile, python, enable=not args.no_enable)
        print(f"installed: {target}" + (f" (Python environment: {python})" if python else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
