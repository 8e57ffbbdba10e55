"""The front doors' options as data: one dataclass per action (chip, train, predict, region workers), each field holding
the option's one default and its help text.

The argparse CLIs are built from the fields (:func:`add_options`), the QGIS algorithms take their defaults and help
from them (:func:`default_of`, :func:`help_sentence`) and the training config's defaults are read from
:class:`TrainOptions`, so a default is written in exactly one place. Standard library only: QGIS imports this
module while it declares its parameters, before any dependency is installed."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any


def option(default: Any, help: str, **argparse_options: Any) -> Any:
    """A dataclass field: the option's default, its help text (no trailing full stop, no default in it) and any
    extra ``add_argument`` keywords (``choices``, ``type`` where the default is None)."""
    return field(default=default, metadata={"help": help, "argparse": argparse_options})


@dataclass(frozen=True)
class ChipOptions:
    """``python -m engine.chip`` and Processing's 'Chip tiles'."""

    size: int = option(320, "side of the square chips in pixels, as in the paper")
    stride: int = option(320, "step between chips in pixels; smaller than the size gives overlapping chips")
    val_fraction: float = option(0.2, "share of blocks (or rasters) held out for validation")
    unlabelled_val_fraction: float = option(
        0.0,
        "share of blocks (or rasters) held out for validation from imagery-only chips; training reads only the "
        "train split of unlabelled chips",
    )
    seed: int = option(0, "seed of the split: the same seed gives the same split")


@dataclass(frozen=True)
class TrainOptions:
    """The training config's front-door keys (``optim.epochs`` …) and Processing's 'Train' fields."""

    epochs: int = option(70, "training epochs, as in the paper")
    batch_size: int = option(10, "images per batch and task")
    lr: float = option(0.01, "peak SGD learning rate")
    iters_per_epoch: int | None = option(None, "iterations per epoch (none: one pass over the larger dataset)")
    seed: int = option(0, "random seed")


@dataclass(frozen=True)
class PredictOptions:
    """``python -m engine.predict`` / ``engine.region`` and Processing's 'Detect and segment' fields."""

    batch_size: int = option(4, "tiles per onnxruntime call")
    device: str = option("auto", "auto: CUDA when available, else the CPU", choices=("auto", "cpu", "cuda"))


@dataclass(frozen=True)
class WorkerOptions:
    """Where ``python -m engine.region`` and Processing's 'Detect and segment a region' run."""

    workers: int = option(2, "local worker processes, each running one raster at a time (ignored with a scheduler)")


def _field(options: type, name: str) -> dataclasses.Field:
    for item in dataclasses.fields(options):
        if item.name == name:
            return item
    raise KeyError(f"{options.__name__} has no option {name!r}")


def default_of(options: type, name: str) -> Any:
    """The one default of option ``name`` of the options dataclass ``options``."""
    return _field(options, name).default


def help_of(options: type, name: str) -> str:
    """The option's help text followed by its default, as the command line shows it."""
    item = _field(options, name)
    if item.default is None:
        return item.metadata["help"]
    shown = f"{item.default:g}" if isinstance(item.default, float) else str(item.default)
    return f"{item.metadata['help']} (default {shown})"


def help_sentence(options: type, name: str) -> str:
    """:func:`help_of` as a sentence, for the QGIS dialog's tooltip."""
    text = help_of(options, name)
    return text[:1].upper() + text[1:] + "."


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, options: type, *names: str) -> None:
    """Add ``--name`` arguments for the fields ``names`` of ``options`` (all fields when none are named), with their
    default, type and help taken from the field."""
    for name in names or [item.name for item in dataclasses.fields(options)]:
        item = _field(options, name)
        extra = dict(item.metadata["argparse"])
        if item.default is not None and "choices" not in extra:
            extra.setdefault("type", type(item.default))
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, default=item.default, help=help_of(options, name), **extra)


def config_defaults(options: type) -> dict[str, Any]:
    """Every field's default by name (for a config's defaults dict)."""
    return {item.name: item.default for item in dataclasses.fields(options)}
