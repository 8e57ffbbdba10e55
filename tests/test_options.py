"""One default per option: engine/core/options.py holds each front-door default and help once; the CLIs, the training
config and the QGIS parameters take them from there, and the known literals are written nowhere else."""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

import pytest

from engine.core.options import (
    ChipOptions,
    PredictOptions,
    TrainOptions,
    WorkerOptions,
    add_options,
    default_of,
    help_of,
    help_sentence,
)

ROOT = Path(__file__).resolve().parent.parent
OPTIONS_FILE = "engine/core/options.py"
MODEL_CONTRACT = "engine/core/modelio.py"
"""Where a model's display score threshold (0.3 when nothing else says) is written, once."""
NOT_YET_MOVED: set[str] = set()
"""Files allowed to keep a literal default while it is being moved (none left)."""


def number_literals(value: str, near: tuple[str, ...] = ()) -> list[str]:
    """'file:line' of every Python number token equal to ``value`` in engine/ and pmtl_qgis/ (strings, comments and
    docstrings do not count), on lines containing one of ``near`` when given."""
    found = []
    for path in sorted([*ROOT.glob("engine/**/*.py"), *ROOT.glob("pmtl_qgis/**/*.py")]):
        text = path.read_text(encoding="utf-8")
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            wanted = token.type == tokenize.NUMBER and token.string == value
            if wanted and (not near or any(word in token.line for word in near)):
                found.append(f"{path.relative_to(ROOT).as_posix()}:{token.start[0]}")
    return found


def outside(places: list[str], *home: str) -> list[str]:
    """The places not in the ``home`` files (nor in :data:`NOT_YET_MOVED`)."""
    return [p for p in places if p.split(":")[0] not in (*home, *NOT_YET_MOVED)]


def test_the_chip_size_is_written_once():
    assert outside(number_literals("320"), OPTIONS_FILE) == []
    assert len([p for p in number_literals("320") if p.startswith(OPTIONS_FILE)]) == 2  # size and stride


def test_the_display_threshold_is_written_once():
    assert outside(number_literals("0.3", near=("score", "thresh")), MODEL_CONTRACT) == []
    assert len(number_literals("0.3", near=("SCORE_THRESH",))) == 1


def test_the_training_defaults_are_written_once():
    assert outside(number_literals("70", near=("epoch",)), OPTIONS_FILE) == []
    assert outside(number_literals("0.01", near=("lr",)), OPTIONS_FILE) == []


def test_the_training_config_defaults_are_the_train_options():
    from engine.train.config import DEFAULTS

    optim, data, runtime = DEFAULTS["optim"], DEFAULTS["data"], DEFAULTS["runtime"]
    assert (optim["epochs"], optim["lr"], optim["iters_per_epoch"]) == (70, 0.01, None)
    assert (data["batch_size"], runtime["seed"]) == (TrainOptions.batch_size, TrainOptions.seed) == (10, 0)


def test_the_command_lines_take_their_defaults_from_the_options():
    from engine.chip.__main__ import build_parser as chip_parser
    from engine.predict.__main__ import build_parser as predict_parser
    from engine.region.__main__ import build_parser as region_parser

    chip = chip_parser().parse_args(["--out", "x"])
    assert (chip.size, chip.stride) == (ChipOptions.size, ChipOptions.stride) == (320, 320)
    assert (chip.val_fraction, chip.seed) == (None, ChipOptions.seed) == (None, 0)  # None: by task, below
    from engine.chip.splits import default_val_fraction

    assert default_val_fraction("det") == ChipOptions.val_fraction == 0.2
    assert default_val_fraction("none") == ChipOptions.unlabelled_val_fraction == 0.0  # training reads train only
    predict = predict_parser().parse_args(["--model", "m.onnx", "--input", "in.tif"])
    assert (predict.batch_size, predict.device) == (PredictOptions.batch_size, PredictOptions.device) == (4, "auto")
    region = region_parser().parse_args(["--model", "m.onnx", "--input", "in.tif", "--out", "o"])
    assert region.workers == WorkerOptions.workers == 2
    assert "chip side" not in chip_parser().format_help()  # the old hand-written help is gone
    assert "(default 320)" in chip_parser().format_help()


def test_an_option_renders_its_default_into_its_help_and_type():
    import argparse

    parser = argparse.ArgumentParser()
    add_options(parser, TrainOptions)
    args = parser.parse_args(["--lr", "0.5", "--iters-per-epoch", "3"])
    assert (args.lr, args.epochs, args.batch_size, args.seed) == (0.5, 70, 10, 0)
    assert args.iters_per_epoch == "3"  # no default, no type: a string (give ``type=`` in the field for numbers)
    assert help_of(TrainOptions, "lr") == "peak SGD learning rate (default 0.01)"
    assert help_sentence(WorkerOptions, "workers").endswith("(ignored with a scheduler) (default 2).")
    assert help_of(TrainOptions, "iters_per_epoch").endswith("larger dataset)")
    with pytest.raises(KeyError, match="ChipOptions has no option 'sise'"):
        default_of(ChipOptions, "sise")


CHIP_ALGORITHMS = ("pmtl:chip_isprs", "pmtl:chip_isprs_raster", "pmtl:chip_own_labels", "pmtl:chip_unlabelled")
QGIS_OPTIONS = [
    *[(alg, "SIZE", ChipOptions, "size") for alg in CHIP_ALGORITHMS],
    *[(alg, "STRIDE", ChipOptions, "stride") for alg in CHIP_ALGORITHMS],
    ("pmtl:chip_own_labels", "VAL_FRACTION", ChipOptions, "val_fraction"),
    ("pmtl:chip_unlabelled", "VAL_FRACTION", ChipOptions, "unlabelled_val_fraction"),
    ("pmtl:chip_unlabelled", "SEED", ChipOptions, "seed"),
    ("pmtl:detect_segment_region", "WORKERS", WorkerOptions, "workers"),
]


@pytest.mark.qgis
@pytest.mark.parametrize(("alg_id", "name", "options", "field"), QGIS_OPTIONS)
def test_a_qgis_parameter_has_the_engine_options_default_and_help(qgis_processing, alg_id, name, options, field):
    from qgis.core import QgsApplication
    from qgis_helpers import ensure_provider

    ensure_provider()
    definition = QgsApplication.processingRegistry().algorithmById(alg_id).parameterDefinition(name)
    assert definition.defaultValue() == default_of(options, field)
    assert definition.help() == help_sentence(options, field)


@pytest.mark.qgis
def test_the_train_dialog_quotes_the_training_configs_defaults(qgis_processing):
    from qgis.core import QgsApplication
    from qgis_helpers import ensure_provider

    from pmtl_qgis.algorithms.train import chip_size_of

    ensure_provider()
    train = QgsApplication.processingRegistry().algorithmById("pmtl:train")
    assert f"({TrainOptions.epochs} by default" in train.parameterDefinition("EPOCHS").help()
    assert f"config, {TrainOptions.lr:g})" in train.parameterDefinition("LR").help()
    assert f"config ({TrainOptions.seed})" in train.parameterDefinition("SEED").help()
    assert chip_size_of([]) == ChipOptions.size
