"""Loading the plugin and running its algorithms leaves QGIS's process as it was for everybody else: sys.path, GDAL's
exception modes and block cache; and no torch in QGIS's process. Checked in a fresh QGIS Python (the system one, as
QGIS runs it), so nothing imported earlier by the tests hides a change."""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest
from qgis_helpers import REPO, label_rgb, scene, tiny_onnx_model, write_geotiff

pytestmark = pytest.mark.qgis

SYSTEM_PYTHON = "/usr/bin/python3"

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from qgis.core import QgsApplication
    app = QgsApplication([], False)
    app.initQgis()
    sys.path.append("/usr/share/qgis/python/plugins")
    import processing
    from processing.core.Processing import Processing
    Processing.initialize()
    sys.path.insert(0, REPO)  # QGIS puts its plugin folder on sys.path
    from osgeo import gdal, ogr, osr
    gdal.SetCacheMax(123456789)

    def state():
        modes = [m.GetUseExceptions() for m in (gdal, ogr, osr)]
        return {"path": list(sys.path), "exceptions": modes, "cache": gdal.GetCacheMax()}

    before = state()
    from pmtl_qgis.plugin import PmtlPlugin
    plugin = PmtlPlugin(None)
    plugin.initProcessing()
    loaded = state()
    processing.run("pmtl:chip_isprs_raster", CHIP)
    processing.run("pmtl:detect_segment", DETECT)
    ran = state()
    print("RESULT " + json.dumps({"before": before, "loaded": loaded, "ran": ran, "torch": "torch" in sys.modules}))
    """
)


def test_plugin_and_algorithms_leave_sys_path_and_gdal_as_they_were(tmp_path):
    image, mask = scene(64)
    ortho = write_geotiff(tmp_path / "ortho.tif", image)
    label = write_geotiff(tmp_path / "label.tif", label_rgb(mask))
    model = tiny_onnx_model(tmp_path / "m.onnx")
    chip = {"INPUT": str(ortho), "LABEL": str(label), "SIZE": 32, "STRIDE": 32, "OUTPUT": str(tmp_path / "chips")}
    detect = {
        "INPUT": str(ortho),
        "MODEL": str(model),
        "OUTPUT_RASTER": str(tmp_path / "classes.tif"),
        "OUTPUT_DETECTIONS": str(tmp_path / "boxes.gpkg"),
    }
    header = f"REPO = {str(REPO)!r}\nCHIP = {chip!r}\nDETECT = {detect!r}\n"
    env = {"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [SYSTEM_PYTHON, "-c", header + SCRIPT], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert (tmp_path / "classes.tif").is_file() and (tmp_path / "chips" / "manifest.json").is_file()
    assert result["loaded"] == result["before"]
    assert result["ran"] == result["before"]
    assert result["before"]["exceptions"] == [0, 0, 0] and result["before"]["cache"] == 123456789
    assert result["torch"] is False
