#!/usr/bin/env bash
# Idempotent environment set-up: Debian QGIS/GDAL + a venv (system site packages) with pinned torch.
# Fast (seconds) when everything is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
STAMP=$VENV/.setup-stamp
REQ_HASH=$(sha256sum requirements.txt scripts/setup.sh | sha256sum | cut -c1-16)

need_apt=0
for pkg in qgis python3-qgis qgis-providers python3-gdal gdal-bin; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt=1
done
if [ "$need_apt" = 1 ]; then
  echo "[setup] installing Debian packages (qgis, python3-qgis, qgis-providers, python3-gdal, gdal-bin)"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends qgis python3-qgis qgis-providers python3-gdal gdal-bin python3-venv >/dev/null
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$REQ_HASH" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV from /usr/bin/python3 (system site packages, for PyQGIS and GDAL)"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
echo "[setup] installing Python requirements"
# (this machine's pip config names local wheel folders that may not exist: drop those warnings from the log)
"$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
"$VENV/bin/python" - <<'PY'
import numpy, torch, torchvision, onnxruntime
from osgeo import gdal, gdal_array  # noqa: F401  (fails if numpy 2 slipped in)
from qgis.core import Qgis
print(f"[setup] ok: numpy {numpy.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"onnxruntime {onnxruntime.__version__}, GDAL {gdal.__version__}, QGIS {Qgis.QGIS_VERSION}")
PY
echo "$REQ_HASH" > "$STAMP"
