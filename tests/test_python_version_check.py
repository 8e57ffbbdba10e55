"""The Python 3.9 check of `make lint` (scripts/check_python_version.py): it passes here, fails on newer code and
covers every engine module QGIS's process imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import check_python_version as check  # noqa: E402

sys.path.remove(str(REPO / "scripts"))

NEWER = {
    "pairwise.py": "import itertools\nprint(list(itertools.pairwise([1, 2, 3])))\n",
    "utc.py": "import datetime\nprint(datetime.datetime.now(datetime.UTC))\n",
    "isinstance_union.py": "from __future__ import annotations\nprint(isinstance(1, int | float))\n",
    "alias.py": "from __future__ import annotations\nNumber = int | None\n",
    "annotation.py": "def f(x: int | None) -> None:\n    pass\n",
    "match.py": "match 1:\n    case 1:\n        pass\n",
}


def test_the_qgis_side_of_this_checkout_runs_on_python_39():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "check_python_version.py")], capture_output=True)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


@pytest.mark.parametrize("name", sorted(NEWER))
def test_newer_features_fail_the_check(tmp_path, name, capsys):
    path = tmp_path / name
    path.write_text(NEWER[name])
    assert check.main([str(path)]) == 1
    assert str(path) in capsys.readouterr().out


def test_postponed_annotations_and_tuples_pass(tmp_path, capsys):
    path = tmp_path / "ok.py"
    path.write_text(
        "from __future__ import annotations\n\ndef f(x: int | None) -> bool:\n    return isinstance(x, (int, float))\n"
    )
    assert check.main([str(path)]) == 0


def test_the_checked_files_cover_every_engine_module_qgis_imports():
    """Import what the plugin imports in QGIS's process; every engine file loaded must be in QGIS_SIDE."""
    code = (
        "import sys, importlib\n"
        "for m in ('engine.chip', 'engine.synth', 'engine.predict', 'engine.predict.model', 'engine.core.modelio',"
        " 'engine.train.config', 'engine.core.progress', 'engine.core.errors', 'engine.data.isprs'):\n"
        "    importlib.import_module(m)\n"
        "print('\\n'.join(m.__file__ for n, m in sys.modules.items() if n.startswith('engine') and m.__file__))\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    *loaded, torch_loaded = done.stdout.split()
    assert torch_loaded == "False"  # inference and data tools never load torch into QGIS
    checked = {p.resolve() for p in check.qgis_side_files()}
    assert {Path(p).resolve() for p in loaded} <= checked
