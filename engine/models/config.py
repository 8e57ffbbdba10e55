"""Model configuration: one dataclass, loaded from YAML or a dict and validated with messages a user can act on."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.core.errors import ConfigError

BACKBONES: tuple[str, ...] = ("resnet18", "resnet50")
NECKS: tuple[str, ...] = ("fpn", "pafpn")
TASKS: tuple[str, ...] = ("det", "seg")
NUM_LEVELS: int = 4
"""Pyramid levels P3..P6 (REFERENCE §2)."""
STRIDES: tuple[int, ...] = (8, 16, 32, 64)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a network; stored in checkpoints and export metadata via :meth:`to_dict`.

    Anchor shapes at level k: base size ``anchor_base_size * 2**k`` times each of ``anchor_scales``, each with the
    aspect ratios ``anchor_aspect_ratios`` (w/h, area preserved), so (1, 2, 0.5) × (1, √2) gives REFERENCE §2's
    (s,s), (s√2,s/√2), (s/√2,s√2) and the same at s·√2.
    """

    backbone: str = "resnet18"
    neck: str = "fpn"
    in_channels: int = 3
    num_det_classes: int = 3
    num_seg_classes: int = 6
    tasks: tuple[str, ...] = ("det", "seg")
    channels: int = 256
    pretrained: str | None = None
    anchor_base_size: float = 24.0
    anchor_scales: tuple[float, ...] = (1.0, math.sqrt(2.0))
    anchor_aspect_ratios: tuple[float, ...] = (1.0, 2.0, 0.5)
    box_variances: tuple[float, float] = (0.1, 0.2)
    head_shared: bool = True
    """True: detection-head convs shared across levels, BatchNorm per level; False: one head per level (reference)."""
    seg_channels: int = 128
    seg_full_res_refine: bool = False
    """False: the 3 refining convs run at stride 4, logits upsampled to the input (Panoptic FPN); True: features are
    upsampled to the input first and refined there (the reference code; ~16× the head's FLOPs)."""

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map location (6 with the defaults)."""
        return len(self.anchor_scales) * len(self.anchor_aspect_ratios)

    @property
    def strides(self) -> tuple[int, ...]:
        return STRIDES

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-serialisable dict (tuples become lists); :func:`load_model_config` reads it back."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


_FIELDS = {f.name: f for f in dataclasses.fields(ModelConfig)}


def _where(origin: str, key: str) -> str:
    return f"{origin}: model config key '{key}'"


def _check_int(origin: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{_where(origin, key)}: expected an integer >= {minimum}, found {value!r}")
    return value


def _check_choice(origin: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{_where(origin, key)}: expected one of {list(choices)}, found {value!r}")
    return value


def _check_floats(origin: str, key: str, value: Any, length: int | None = None) -> tuple[float, ...]:
    ok = isinstance(value, (list, tuple)) and len(value) > 0 and (length is None or len(value) == length)
    if ok:
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value)
    if not ok:
        size = f"{length} " if length else ""
        raise ConfigError(f"{_where(origin, key)}: expected a list of {size}positive numbers, found {value!r}")
    return tuple(float(v) for v in value)


def _check_bool(origin: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{_where(origin, key)}: expected true or false, found {value!r}")
    return value


def _check_tasks(origin: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    ok = isinstance(value, (list, tuple)) and len(value) > 0 and all(v in TASKS for v in value)
    if not ok or len(set(value)) != len(value):
        expected = f"a non-empty list of distinct {list(TASKS)}"
        raise ConfigError(f"{_where(origin, 'tasks')}: expected {expected}, found {value!r}")
    return tuple(t for t in TASKS if t in value)


def _check_pretrained(origin: str, value: Any) -> str | None:
    if value is None or value == "imagenet":
        return value
    if isinstance(value, (str, os.PathLike)) and str(value):
        return str(value)
    expected = "null, 'imagenet' or a state-dict path"
    raise ConfigError(f"{_where(origin, 'pretrained')}: expected {expected}, found {value!r}")


def _validate(data: Mapping[str, Any], origin: str) -> ModelConfig:
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{origin}: unknown model config key(s) {unknown}; expected keys among {sorted(_FIELDS)}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "backbone":
            out[key] = _check_choice(origin, key, value, BACKBONES)
        elif key == "neck":
            out[key] = _check_choice(origin, key, value, NECKS)
        elif key in ("in_channels", "num_det_classes", "num_seg_classes", "channels", "seg_channels"):
            out[key] = _check_int(origin, key, value, 1)
        elif key == "tasks":
            out[key] = _check_tasks(origin, value)
        elif key == "pretrained":
            out[key] = _check_pretrained(origin, value)
        elif key == "anchor_base_size":
            out[key] = _check_floats(origin, key, [value], 1)[0]
        elif key in ("anchor_scales", "anchor_aspect_ratios"):
            out[key] = _check_floats(origin, key, value)
        elif key == "box_variances":
            out[key] = _check_floats(origin, key, value, 2)
        else:
            out[key] = _check_bool(origin, key, value)
    return ModelConfig(**out)


def load_model_config(source: str | os.PathLike[str] | Mapping[str, Any] | ModelConfig) -> ModelConfig:
    """Read a model config from a YAML file, a dict (e.g. a checkpoint's stored config) or pass a ModelConfig through.

    Missing keys take the dataclass defaults; unknown keys, wrong types and bad values raise ConfigError.
    """
    if isinstance(source, ModelConfig):
        return source
    if isinstance(source, Mapping):
        return _validate(source, "model config")
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"model config file {str(path)!r}: expected an existing YAML file, found nothing there")
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"model config file {str(path)!r}: expected valid YAML, found a parse error: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"model config file {str(path)!r}: expected a mapping of keys, found {type(data).__name__}")
    return _validate(data, str(path))
