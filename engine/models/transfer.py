"""Start a network from another one's weights: the encoder whole, each head by class name.

Used by fine-tuning (``init.checkpoint`` of a training config, ``python -m engine.finetune``). The encoder (backbone
+ neck) is copied; a head is copied when the new model has it, with the rows of its class predictor matched by class
name: a class of the same name keeps its weights, a new class keeps the fresh initialisation of the new model (the
focal prior for detection), a class the new table drops is dropped. The first convolution follows the new bands:
bands of the same name keep their filters, other bands start from the mean filter (scaled so that an image with
every band equal gives the old response).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from engine.core.errors import ConfigError

FIRST_CONV = "backbone.conv1.weight"
CLASS_PREDICTORS = {"det": "det_head.cls_tower.predictors.", "seg": "seg_head.classifier."}
"""State-dict key prefix of each head's class predictor (the rows that are per class)."""
HEAD_PREFIXES = {"det": "det_head.", "seg": "seg_head."}


@dataclass
class Transfer:
    """What :func:`transfer_weights` copied: per head the classes kept and the fresh ones, heads left fresh."""

    kept_classes: dict[str, list[str]] = field(default_factory=dict)
    new_classes: dict[str, list[str]] = field(default_factory=dict)
    fresh_heads: list[str] = field(default_factory=list)
    bands_adapted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "kept_classes": self.kept_classes,
            "new_classes": self.new_classes,
            "fresh_heads": self.fresh_heads,
            "bands_adapted": self.bands_adapted,
        }


def class_pairs(old: Sequence[str], new: Sequence[str]) -> list[tuple[int, int]]:
    """(new index, old index) of every class name both tables have, in new-table order."""
    position = {name: i for i, name in enumerate(old)}
    return [(j, position[name]) for j, name in enumerate(new) if name in position]


def remap_rows(old: Tensor, fresh: Tensor, pairs: Sequence[tuple[int, int]], groups: int) -> Tensor:
    """``fresh`` with the rows of matched classes taken from ``old``.

    Rows are ``groups`` blocks of one row per class (the detection predictor has one block per anchor, the
    segmentation classifier one block): row ``g * n_new + j`` ← ``g * n_old + i`` for each pair (j, i)."""
    n_old, n_new = old.shape[0] // groups, fresh.shape[0] // groups
    out = fresh.clone()
    for g in range(groups):
        for j, i in pairs:
            out[g * n_new + j] = old[g * n_old + i]
    return out


def first_conv(old: Tensor, old_bands: Sequence[str], new_bands: Sequence[str]) -> Tensor:
    """The first convolution's weights for ``new_bands``: a band the old model had keeps its filter, another gets
    the mean filter × n_old / n_new (an image whose bands are all equal then gives the old response)."""
    if list(old_bands) == list(new_bands):
        return old
    mean = old.mean(dim=1) * (len(old_bands) / len(new_bands))
    columns = [old[:, list(old_bands).index(b)] if b in old_bands else mean for b in new_bands]
    return torch.stack(columns, dim=1)


def _check_encoder(source: Mapping[str, Tensor], target: Mapping[str, Tensor], origin: str) -> None:
    for key, value in target.items():
        if not key.startswith(("backbone.", "neck.")) or key == FIRST_CONV:
            continue
        if key not in source or source[key].shape != value.shape:
            found = tuple(source[key].shape) if key in source else "nothing"
            raise ConfigError(
                f"{origin}: its encoder does not fit the new network at '{key}' (expected "
                f"{tuple(value.shape)}, found {found}); fine-tune with the checkpoint's own model config"
            )


def _head_tensor(
    key: str, task: str, source: Mapping[str, Tensor], fresh: Tensor, classes: tuple[Sequence[str], Sequence[str]]
) -> Tensor:
    """One tensor of a copied head: class-predictor rows by name, everything else as it was."""
    if not key.startswith(CLASS_PREDICTORS[task]):
        return source[key]
    old_names, new_names = classes
    groups = source[key].shape[0] // len(old_names)  # anchors per location for detection, 1 for segmentation
    return remap_rows(source[key], fresh, class_pairs(old_names, new_names), groups)


def transfer_weights(
    target: torch.nn.Module,
    source: Mapping[str, Tensor],
    old_classes: Mapping[str, Sequence[str]],
    new_classes: Mapping[str, Sequence[str]],
    bands: tuple[Sequence[str], Sequence[str]],
    origin: str = "init checkpoint",
) -> Transfer:
    """Load ``source`` (a state dict) into ``target`` in place, as the module docstring says.

    ``old_classes`` / ``new_classes``: class names per head ("det", "seg") of the source and the target;
    ``bands``: (source bands, target bands). A head the source lacks stays as initialised."""
    state = target.state_dict()
    _check_encoder(source, state, origin)
    report = Transfer(bands_adapted=list(bands[0]) != list(bands[1]))
    for task, prefix in HEAD_PREFIXES.items():
        if not any(k.startswith(prefix) for k in state):
            continue
        if task not in old_classes or not any(k.startswith(prefix) for k in source):
            report.fresh_heads.append(task)
            continue
        names = (old_classes[task], new_classes[task])
        report.kept_classes[task] = [n for n in names[1] if n in names[0]]
        report.new_classes[task] = [n for n in names[1] if n not in names[0]]
        for key in (k for k in state if k.startswith(prefix)):
            state[key] = _head_tensor(key, task, source, state[key], names)
    for key in state:
        if key.startswith(("backbone.", "neck.")):
            state[key] = first_conv(source[key], *bands) if key == FIRST_CONV else source[key]
    target.load_state_dict(state)
    return report
