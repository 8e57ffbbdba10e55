"""``init.checkpoint``: a training run that starts from a pmtl checkpoint instead of random or ImageNet weights.

The new network takes the checkpoint's architecture (its model config; ``model`` is not read) with the heads and
class tables of the new chip datasets, and its weights by :func:`engine.models.transfer.transfer_weights` (encoder
kept, heads by class name). ``init.untrained_heads: keep`` also keeps a head of the checkpoint that this run does
not train (its classes and thresholds carry over unchanged), ``drop`` (default) leaves it out. The starting model's
bands and normalisation carry over when the new chips have the same bands; other bands get the new chips'
statistics. The GSD is one per model: chips at another GSD than the checkpoint's are refused unless
``init.allow_new_gsd``. ``init.frozen_stages`` freezes the first ResNet stages (1 = stem, 2 = + layer1, …) and
``init.encoder_lr`` scales the learning rate of the rest of the encoder. Every checkpoint of the run records where it
started (``metadata.init``: path, SHA-256, the starting model's name, GSD, bands, classes, its own ``init``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from engine.core.classes import recorded
from engine.core.errors import ConfigError
from engine.models import load_model_config
from engine.models.checkpoint import inference_state, load_checkpoint
from engine.models.config import ModelConfig
from engine.models.transfer import Transfer, transfer_weights
from engine.train.config import FROZEN_STAGES

GSD_TOLERANCE = 0.05
"""Relative GSD difference above which chips are at "another GSD" than the starting model."""


@dataclass
class WarmStart:
    """The starting checkpoint, read once."""

    path: Path
    model_cfg: ModelConfig
    state: dict[str, Any]
    metadata: dict[str, Any]
    sha256: str

    def classes(self, task: str) -> list[str]:
        return list(self.metadata.get(f"{task}_classes") or [])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_warm_start(cfg: dict[str, Any]) -> WarmStart | None:
    """The checkpoint of ``init.checkpoint`` (weights only), or None when the run starts fresh."""
    if not cfg["init"]["checkpoint"]:
        return None
    path = Path(cfg["init"]["checkpoint"])
    payload = load_checkpoint(path)
    meta = payload.get("metadata") or {}
    if not meta.get("bands"):
        raise ConfigError(f"config key 'init.checkpoint' ({path}): expected a pmtl training checkpoint with metadata "
                          "(bands, classes), found none")  # fmt: skip
    model_cfg = load_model_config(payload["model_config"])
    return WarmStart(path.resolve(), model_cfg, inference_state(payload), meta, _sha256(path))


def kept_heads(start: WarmStart, cfg: dict[str, Any]) -> list[str]:
    """Heads of the starting model that this run does not train but keeps (``init.untrained_heads: keep``)."""
    if cfg["init"]["untrained_heads"] != "keep":
        return []
    return [t for t in start.model_cfg.tasks if t not in cfg["tasks"]]


def model_config(start: WarmStart, cfg: dict[str, Any], bands: int, sizes: dict[str, int]) -> ModelConfig:
    """The starting model's architecture with this run's heads, class counts and input bands (no ImageNet load)."""
    tasks = [t for t in ("det", "seg") if t in cfg["tasks"] or t in kept_heads(start, cfg)]
    return dataclasses.replace(start.model_cfg, tasks=tuple(tasks), in_channels=bands, pretrained=None, **sizes)


def check_gsd(start: WarmStart, cfg: dict[str, Any], manifests: dict[str, dict[str, Any]]) -> None:
    """One GSD per model: chips at another GSD than the starting model's need ``init.allow_new_gsd``."""
    old = start.metadata.get("gsd")
    if not old or cfg["init"]["allow_new_gsd"]:
        return
    for task, manifest in manifests.items():
        if abs(float(manifest["gsd"]) - float(old)) > GSD_TOLERANCE * float(old):
            raise ConfigError(
                f"config key 'data.{task}' ({cfg['data'][task]}): chips at {manifest['gsd']:g} m, the starting model "
                f"({start.path}) works at {old:g} m; chip at {old:g} m (python -m engine.finetune resamples) or set "
                "init.allow_new_gsd=true"
            )


def freeze_stages(student: nn.Module, stages: int) -> None:
    """No gradient for the first ``stages`` ResNet stages of the student's backbone."""
    for names in FROZEN_STAGES[:stages]:
        for name in names:
            getattr(student.backbone, name).requires_grad_(False)


def apply_warm_start(
    start: WarmStart, student: nn.Module, cfg: dict[str, Any], manifests: dict[str, dict[str, Any]]
) -> Transfer:
    """Copy the starting weights into ``student`` (by class name) and freeze its first stages."""
    check_gsd(start, cfg, manifests)
    old = {t: start.classes(t) for t in start.model_cfg.tasks}
    new = {t: list(manifests[t][f"{t}_classes"]) for t in cfg["tasks"]}
    new.update({t: old[t] for t in kept_heads(start, cfg)})
    bands = (list(start.metadata["bands"]), list(next(iter(manifests.values()))["bands"]))
    report = transfer_weights(
        student, start.state, old, new, bands, origin=f"config key 'init.checkpoint' ({start.path})"
    )
    freeze_stages(student, cfg["init"]["frozen_stages"])
    return report


def normalization(
    start: WarmStart, manifests: dict[str, dict[str, Any]], default: tuple[tuple[float, ...], tuple[float, ...]]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The starting model's (mean, std) when the new chips have its bands, else ``default`` (the new chips')."""
    meta = start.metadata
    same_bands = all(list(m["bands"]) == list(meta["bands"]) for m in manifests.values())
    if same_bands and meta.get("mean") and meta.get("std"):
        return tuple(meta["mean"]), tuple(meta["std"])
    return default


def run_metadata(start: WarmStart, cfg: dict[str, Any], report: Transfer) -> dict[str, Any]:
    """Checkpoint metadata of the new run: provenance under ``init``; a kept head's classes and thresholds."""
    meta = start.metadata
    keep = kept_heads(start, cfg)
    out: dict[str, Any] = {
        "init": {
            "checkpoint": str(start.path),
            "sha256": start.sha256,
            "name": meta.get("name"),
            "gsd": meta.get("gsd"),
            "bands": meta.get("bands"),
            "classes": {t: start.classes(t) for t in start.model_cfg.tasks},
            "datasets": meta.get("datasets"),
            "untrained_heads": cfg["init"]["untrained_heads"],
            "frozen_stages": cfg["init"]["frozen_stages"],
            "encoder_lr": cfg["init"]["encoder_lr"],
            **report.to_dict(),
            "parent": meta.get("init"),
        }
    }
    if keep:
        out["tasks"] = [t for t in ("det", "seg") if t in cfg["tasks"] or t in keep]
    if "seg" in keep:
        out.update(seg_classes=meta.get("seg_classes"), seg_colors=recorded(meta, "seg_colors"))
    if "det" in keep:
        out.update(det_classes=meta.get("det_classes"), det_colors=recorded(meta, "det_colors"))
        if recorded(meta, "class_score_thresh"):
            out["class_score_thresh"] = recorded(meta, "class_score_thresh")
    return out
