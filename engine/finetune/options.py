"""The options of one fine-tuning run: one dataclass, whose fields give the CLI its arguments (default and help).

Torch- and GDAL-free: the QGIS algorithm reads the defaults and help from here.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from engine.core.errors import ConfigError

TASKS = ("det", "seg", "both")
UNTRAINED_HEADS = ("drop", "keep")


def _help(text: str, **extra: Any) -> dict[str, Any]:
    """A field's CLI metadata: its help and any other ``add_argument`` keyword (``flag`` renames the option)."""
    return {"help": text, **extra}


@dataclass
class FinetuneOptions:
    """What ``python -m engine.finetune`` does; every field is a ``--flag`` (``images`` is ``--image``, repeatable)."""

    checkpoint: str = field(
        default=None,
        metadata=_help(
            "the starting model: a pmtl checkpoint (best.pt), or a model.onnx whose metadata names its checkpoint",
            required=True,
        ),
    )
    images: list[str] = field(
        default=None,
        metadata=_help(
            "raster (or folder of rasters) the labels are drawn on; repeatable",
            required=True,
            flag="--image",
            action="append",
        ),
    )
    labels: str = field(
        default=None,
        metadata=_help(
            "polygon layer of the corrected labels (any OGR format; file|layername=NAME), e.g. "
            "the edited Detections layer",
            required=True,
        ),
    )
    out: str = field(
        default=None, metadata=_help("output folder: model.onnx, best.pt, finetune.json, the chips", required=True)
    )
    task: str = field(
        default="det",
        metadata=_help("what the labels are for: det (boxes), seg (polygons → class mask) or both", choices=TASKS),
    )
    class_field: str | None = field(
        default=None, metadata=_help("attribute holding each feature's class name (default: one class)")
    )
    class_name: str | None = field(
        default=None,
        metadata=_help("the one class's name without --class-field (default: the model's first detection class)"),
    )
    aoi: str | None = field(
        default=None,
        metadata=_help("polygon layer of the area where the labels are complete (default: the labels' extent)"),
    )
    steps: int = field(default=150, metadata=_help("optimizer steps (150 take a few minutes on 2 CPU cores)"))
    size: int | None = field(
        default=None, metadata=_help("chip side in px at the model's GSD (default: the model's training chip size)")
    )
    gsd: float | None = field(
        default=None,
        metadata=_help(
            "train at this GSD in m instead of the model's (default: the model's; the rasters are resampled to it)"
        ),
    )
    scale_max: float | None = field(
        default=None,
        metadata=_help(
            "raw value mapped to 1.0, for 16-bit or float rasters (e.g. 4095 for 12-bit data; default: the dtype's "
            "maximum, as engine.chip)"
        ),
    )
    holdout: float = field(
        default=0.25,
        metadata=_help("share of the labelled area held out (blocks of 2 chips) for the before/after scores"),
    )
    batch_size: int = field(default=4, metadata=_help("chips per batch"))
    lr: float = field(default=0.001, metadata=_help("AdamW learning rate of the heads"))
    # Whole network at one rate by default: from the synthetic demo model to real NEON crowns, one tile → another,
    # +13.2 AP50 points vs +5.3 with stem + layer1 frozen and the encoder at 0.1× (docs/results/finetune/)
    encoder_lr: float = field(default=1.0, metadata=_help("learning rate of the encoder, × --lr"))
    frozen_stages: int = field(
        default=0, metadata=_help("first ResNet stages kept frozen (0 none, 1 stem, 2 stem + layer1, … 5)")
    )
    untrained_heads: str = field(
        default="drop",
        metadata=_help(
            "a head of the model the labels do not train: drop it or keep it as it is", choices=UNTRAINED_HEADS
        ),
    )
    seed: int = field(default=0, metadata=_help("seed of the split, the initialisation of new classes and the batches"))
    device: str = field(default="auto", metadata=_help("auto | cpu | cuda | cuda:N"))

    def validate(self) -> FinetuneOptions:
        """Range checks with one-line errors naming the option."""
        checks = (
            ("--steps", self.steps >= 1, "an integer >= 1", self.steps),
            ("--size", self.size is None or self.size >= 32, "an integer >= 32", self.size),
            ("--gsd", self.gsd is None or self.gsd > 0, "a positive number of metres", self.gsd),
            ("--scale-max", self.scale_max is None or self.scale_max > 0, "a positive raw value", self.scale_max),
            ("--holdout", 0 < self.holdout < 1, "a fraction between 0 and 1", self.holdout),
            ("--batch-size", self.batch_size >= 1, "an integer >= 1", self.batch_size),
            ("--lr", self.lr > 0, "a positive number", self.lr),
            ("--encoder-lr", self.encoder_lr >= 0, "a factor >= 0", self.encoder_lr),
            ("--frozen-stages", 0 <= self.frozen_stages <= 5, "0 .. 5", self.frozen_stages),
            ("--task", self.task in TASKS, f"one of {list(TASKS)}", self.task),
        )
        for flag, ok, expected, found in checks:
            if not ok:
                raise ConfigError(f"{flag}: expected {expected}, found {found!r}")
        if self.class_field and self.class_name:
            raise ConfigError("--class-field and --class-name: give one (a field of class names, or one class name)")
        return self


def flag_of(item: dataclasses.Field) -> str:
    return item.metadata.get("flag", "--" + item.name.replace("_", "-"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One argument per :class:`FinetuneOptions` field, with its default and help."""
    for item in dataclasses.fields(FinetuneOptions):
        meta = dict(item.metadata)
        kwargs: dict[str, Any] = {"dest": item.name, "help": meta.pop("help")}
        meta.pop("flag", None)
        if meta.get("action") != "append":
            kind = {"int": int, "float": float}.get(str(item.type).split(" ")[0], str)
            kwargs.update(type=kind, default=item.default)
        if item.default is not None and "required" not in meta:
            kwargs["help"] += f" [{item.default}]"
        parser.add_argument(flag_of(item), **kwargs, **meta)


def from_namespace(args: argparse.Namespace) -> FinetuneOptions:
    return FinetuneOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneOptions)}).validate()
