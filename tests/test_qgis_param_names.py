"""The algorithms name their parameters by string, as declared once in their specs (pmtl_qgis.algorithms.params):
every name the code reads or returns must be one the algorithm declares, so a typo fails here, not silently in a
dialog (QGIS returns 0 / None for a parameter it does not know)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
from qgis_helpers import ensure_provider

from pmtl_qgis.algorithms import ALGORITHMS
from pmtl_qgis.algorithms.chip_base import ChipAlgorithm

pytestmark = pytest.mark.qgis

NAME = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")
DECLARING = {"spec", "output"}
"""Calls that declare a parameter (their names are the declarations, not uses)."""
NOT_PARAMETERS = {"PNG"}
"""Capitalised words the algorithms pass that are no parameter (a Qt image format)."""


def names_used(path: Path) -> dict[str, int]:
    """Parameter-like names (``"OUTPUT_RASTER"``) passed to a call or used as a dict key in ``path`` → first line."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            values = [] if function in DECLARING else node.args
        elif isinstance(node, ast.Dict):
            values = [key for key in node.keys if key is not None]
        else:
            continue
        for value in values:
            if isinstance(value, ast.Constant) and isinstance(value.value, str) and NAME.match(value.value):
                found.setdefault(value.value, value.lineno)
    for word in NOT_PARAMETERS:
        found.pop(word, None)
    return found


def declared(algorithm: type) -> set[str]:
    instance = ensure_provider().algorithm(algorithm.ALG_ID)
    return {p.name() for p in instance.parameterDefinitions()} | {o.name() for o in instance.outputDefinitions()}


def test_names_used_are_found_in_calls_and_dict_keys(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text('spec("integer", "SIZE")\nx = f(p, "STRIDE")\ny = {"OUTPUT": 1, "path": 2}\nz = g("nope")\n')
    assert names_used(source) == {"STRIDE": 2, "OUTPUT": 3}


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.ALG_ID)
def test_every_parameter_name_an_algorithm_reads_is_declared(qgis_processing, algorithm: type) -> None:
    path = Path(inspect.getsourcefile(algorithm))
    unknown = {name: line for name, line in names_used(path).items() if name not in declared(algorithm)}
    assert not unknown, f"{path.name} names parameters it does not declare (name: line): {unknown}"


def test_the_shared_chip_code_reads_only_parameters_the_chip_algorithms_declare(qgis_processing) -> None:
    chips = [algorithm for algorithm in ALGORITHMS if issubclass(algorithm, ChipAlgorithm)]
    assert len(chips) == 4
    used = names_used(Path(inspect.getsourcefile(ChipAlgorithm)))
    unknown = set(used) - set.union(*(declared(algorithm) for algorithm in chips))
    assert not unknown, f"chip_base.py names parameters no chip algorithm declares: {unknown}"


def test_numbers_become_the_engine_flags_and_config_keys_their_specs_name(qgis_processing, tmp_path) -> None:
    """export_onnx's command line and Train's config overrides, string for string, in dialog order; numbers left
    empty are left out (the engine's default applies)."""
    from qgis.core import QgsProcessingContext

    context, checkpoint, chips = QgsProcessingContext(), tmp_path / "best.pt", tmp_path / "chips"
    checkpoint.write_bytes(b"")
    chips.mkdir()
    export = ensure_provider().algorithm("export_onnx").create()
    params = {"CHECKPOINT": str(checkpoint), "OPSET": 18, "SCORE_THRESHOLD": 0.4, "TILE_SIZE": 256, "PRECISION": 1}
    assert export.arguments(params, context, tmp_path / "m.onnx") == [
        "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx"), "--variant", "full",
        "--precision", "int8", "--tile-size", "256", "--score-thresh", "0.4", "--opset", "18",
    ]  # fmt: skip
    train = ensure_provider().algorithm("train").create()
    params = {"SEG_DATA": str(chips), "SEED": 3, "LR": 0.5, "EPOCHS": 2, "DEVICE": 1}
    assert train.overrides(params, context, tmp_path / "run") == [
        f'runtime.out="{tmp_path / "run"}"', f'data.seg="{chips.resolve()}"', "tasks=[seg]",
        "optim.epochs=2", "optim.lr=0.5", "runtime.seed=3", "runtime.device=cpu",
    ]  # fmt: skip
