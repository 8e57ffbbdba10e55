"""The plugin zip passes what the official QGIS plugin repository checks: one plugin folder with a LICENSE (GPL-2.0,
as QGIS plugins link against QGIS), complete metadata naming every algorithm, and nothing generated inside."""

from __future__ import annotations

import configparser
import sys
import zipfile

import pytest
from qgis_helpers import REPO

from pmtl_qgis.algorithms import ALGORITHMS

sys.path.insert(0, str(REPO / "scripts"))
import package_plugin

sys.path.remove(str(REPO / "scripts"))

pytestmark = pytest.mark.qgis

REQUIRED = ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "repository")
OBSOLETE = ("category", "qgisMaximumVersion_", "class_name", "type", "plugin_dependencies_")
GENERATED = ("__pycache__", ".pyc", ".pyo", ".onnx", ".pt", ".pth", ".partial", "environment.json", ".DS_Store")


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory):
    # Something a test run leaves in the source tree must not be shipped.
    stray = REPO / "engine" / "core" / "stray_generated_file.json"
    stray.write_text("{}")
    try:
        path = package_plugin.build_zip(tmp_path_factory.mktemp("dist") / "pmtl_qgis.zip")
    finally:
        stray.unlink()
    with zipfile.ZipFile(path) as archive:
        yield archive


def test_one_plugin_folder_with_its_license(plugin_zip):
    names = plugin_zip.namelist()
    assert {name.split("/")[0] for name in names} == {"pmtl_qgis"}
    assert "pmtl_qgis/__init__.py" in names and "pmtl_qgis/metadata.txt" in names
    license_text = plugin_zip.read("pmtl_qgis/LICENSE").decode("utf-8")
    assert "GNU GENERAL PUBLIC LICENSE" in license_text and "Version 2, June 1991" in license_text
    assert "GPL-2.0-or-later" in license_text and "any later version" in license_text


def test_metadata_is_complete_and_names_every_algorithm(plugin_zip):
    parser = configparser.ConfigParser()
    parser.read_string(plugin_zip.read("pmtl_qgis/metadata.txt").decode("utf-8"))
    meta = parser["general"]
    for key in REQUIRED:
        assert meta.get(key, "").strip(), f"metadata.txt lacks {key}"
    assert not [key for key in meta if key in OBSOLETE]
    assert f"pmtl_qgis/{meta['icon']}" in plugin_zip.namelist()
    for algorithm in ALGORITHMS:
        assert f"pmtl:{algorithm.ALG_ID}" in meta["about"], algorithm.ALG_ID
        assert f"pmtl:{algorithm.ALG_ID}" in meta["changelog"], algorithm.ALG_ID
    for key in ("homepage", "tracker", "repository"):
        assert meta[key].startswith("https://")


def test_nothing_generated_inside(plugin_zip):
    names = plugin_zip.namelist()
    assert not [name for name in names if any(mark in name for mark in GENERATED)]
    assert "pmtl_qgis/vendor/engine/core/stray_generated_file.json" not in names
    tracked = package_plugin.tracked_files(REPO)
    assert tracked is not None
    for source, name in package_plugin.zip_entries(REPO):
        assert source.resolve() in tracked, f"{name} comes from an untracked file {source}"
