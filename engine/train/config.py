"""Training configs as data: YAML files in ``models/`` merged over defaults, validated with clear errors.

A config is a nested dict. Every key must exist in :data:`DEFAULTS` (a typo is an error, not a silent no-op) and
values must have the default's type (``None`` defaults accept a string or a number). ``key=value`` overrides on the
command line use dotted paths (``optim.lr=0.005``) and YAML syntax for the value.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from engine.core.errors import ConfigError
from engine.core.options import TrainOptions
from engine.core.settings import RUN_NORMALIZATIONS, KDSettings, LossSettings, configure_losses, defaults

DEFAULTS: dict[str, Any] = {
    "name": "run",
    "model": "models/student.yaml",
    "tasks": ["det", "seg"],
    "data": {
        "det": None,
        "seg": None,
        "train_split": "train",
        "val_split": "val",
        "batch_size": TrainOptions.batch_size,
        "num_workers": 2,
        "augment": True,
        "normalization": "pooled",
        "max_val_chips": None,
        "unlabelled": None,
    },
    "kd": {
        "det_teacher": None,
        "seg_teacher": None,
        "adapter_kernel": 3,
        **defaults(KDSettings),
    },
    "loss": defaults(LossSettings),
    "optim": {
        "name": "sgd",
        "lr": TrainOptions.lr,
        "momentum": 0.9,
        "weight_decay": 0.0005,
        "warmup_iters": 500,
        "warmup_factor": 0.1,
        "min_lr_ratio": 0.1,
        "epochs": TrainOptions.epochs,
        "iters_per_epoch": TrainOptions.iters_per_epoch,
        "grad_clip": 10.0,  # not in the paper or reference: guards short warm-ups against divergence; null = off
        # last N epochs: the shared encoder's BatchNorm uses (and no longer updates) its running statistics, so it
        # trains on the normalisation inference uses (ours; 0 = off, see engine.train.loop.freeze_encoder_norms)
        "freeze_encoder_bn_epochs": 0,
    },
    # start from a pmtl checkpoint (fine-tuning; engine.train.warmstart): encoder kept, heads matched by class name
    "init": {
        "checkpoint": None,
        "untrained_heads": "drop",  # drop | keep: a head of the checkpoint that this run does not train
        "frozen_stages": 0,  # ResNet stages without gradient: 1 = stem, 2 = stem + layer1, ...
        "encoder_lr": 1.0,  # learning rate of the (unfrozen) encoder, x optim.lr
        "allow_new_gsd": False,  # chips at another GSD than the checkpoint's (one GSD per model otherwise)
    },
    "ema": {"enabled": True, "decay": 0.9998, "tau": 2000.0},
    "eval": {"score_thresh": 0.05, "nms_iou": 0.5, "select": "auto"},
    "runtime": {
        "device": "auto",
        "amp": True,
        "cpu_bf16": False,  # bf16 autocast on CPUs with native bf16 (2x faster steps); opt-in: tiny chips can NaN
        "channels_last": True,
        "seed": TrainOptions.seed,
        "out": "runs/run",
        "tensorboard": False,
        "log_every": 10,
    },
}

OPTIMIZERS = ("sgd", "adamw")
UNTRAINED_HEADS = ("drop", "keep")
FROZEN_STAGES = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))
"""ResNet trunk modules frozen by ``init.frozen_stages`` = 1, 2, …"""
TASKS = ("det", "seg")


def _check(node: Any, default: Any, path: str) -> Any:
    if isinstance(default, dict):
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{path}': expected a mapping, found {type(node).__name__} ({node!r})")
        merged = copy.deepcopy(default)
        for key, value in node.items():
            sub = f"{path}.{key}" if path else str(key)
            if key not in default:
                known = ", ".join(sorted(default))
                raise ConfigError(f"config key '{sub}' is unknown; expected one of: {known}")
            merged[key] = _check(value, default[key], sub)
        return merged
    if default is None or node is None:
        return node
    if isinstance(default, bool):
        if not isinstance(node, bool):
            raise ConfigError(f"config key '{path}': expected true/false, found {node!r}")
        return node
    if isinstance(default, float) and isinstance(node, (int, str)) and not isinstance(node, bool):
        try:
            return float(node)  # YAML 1.1 reads "1e-3" as a string
        except ValueError:
            raise ConfigError(f"config key '{path}': expected a number, found {node!r}") from None
    if isinstance(default, list):
        if not isinstance(node, list):
            raise ConfigError(f"config key '{path}': expected a list, found {node!r}")
        return node
    if not isinstance(node, type(default)) or isinstance(node, bool):
        raise ConfigError(f"config key '{path}': expected {type(default).__name__}, found {node!r}")
    return node


def _semantic_checks(cfg: dict[str, Any]) -> None:
    tasks = cfg["tasks"]
    if not tasks or any(t not in TASKS for t in tasks) or len(set(tasks)) != len(tasks):
        raise ConfigError(f"config key 'tasks': expected a non-empty subset of {list(TASKS)}, found {tasks!r}")
    for task in tasks:
        if not cfg["data"][task]:
            raise ConfigError(f"config key 'data.{task}': task '{task}' is trained, so a chip dataset folder is needed")
    if configure_losses(cfg).kd.enabled:  # also validates every loss/KD value
        if tasks != ["det", "seg"] and set(tasks) != set(TASKS):
            raise ConfigError("config key 'kd': distillation fills the missing task, so tasks must be [det, seg]")
        for key in ("det_teacher", "seg_teacher"):
            if not cfg["kd"][key]:
                raise ConfigError(f"config key 'kd.{key}': distillation is on, so a teacher checkpoint is needed")
    if cfg["data"]["normalization"] not in RUN_NORMALIZATIONS:
        raise ConfigError(
            f"config key 'data.normalization': expected {'|'.join(RUN_NORMALIZATIONS)}, "
            f"found {cfg['data']['normalization']!r}"
        )
    if cfg["kd"]["adapter_kernel"] not in (1, 3):
        raise ConfigError(f"config key 'kd.adapter_kernel': expected 1 or 3, found {cfg['kd']['adapter_kernel']!r}")
    if cfg["optim"]["name"] not in OPTIMIZERS:
        raise ConfigError(
            f"config key 'optim.name': expected one of {'|'.join(OPTIMIZERS)}, found {cfg['optim']['name']!r}"
        )
    for key in ("lr", "momentum", "weight_decay", "min_lr_ratio", "warmup_factor"):
        if cfg["optim"][key] < 0:
            raise ConfigError(f"config key 'optim.{key}': expected a value >= 0, found {cfg['optim'][key]!r}")
    if cfg["optim"]["epochs"] < 1:
        raise ConfigError(f"config key 'optim.epochs': expected >= 1, found {cfg['optim']['epochs']!r}")
    if cfg["data"]["batch_size"] < 1:
        raise ConfigError(f"config key 'data.batch_size': expected >= 1, found {cfg['data']['batch_size']!r}")
    frozen = cfg["optim"]["freeze_encoder_bn_epochs"]
    if not 0 <= frozen < cfg["optim"]["epochs"]:
        raise ConfigError(
            f"config key 'optim.freeze_encoder_bn_epochs': expected 0 .. optim.epochs - 1 "
            f"({cfg['optim']['epochs'] - 1}), found {frozen!r}"
        )
    check_init_config(cfg["init"])
    if cfg["eval"]["select"] not in ("auto", "det", "seg", "mean"):
        raise ConfigError(f"config key 'eval.select': expected auto|det|seg|mean, found {cfg['eval']['select']!r}")


def check_init_config(init: dict[str, Any]) -> None:
    """Values of the ``init`` section (fine-tuning from a checkpoint; types are checked by :func:`_check`)."""
    if init["untrained_heads"] not in UNTRAINED_HEADS:
        raise ConfigError(f"config key 'init.untrained_heads': expected drop|keep, found {init['untrained_heads']!r}")
    if not 0 <= init["frozen_stages"] <= len(FROZEN_STAGES):
        raise ConfigError(
            f"config key 'init.frozen_stages': expected 0 .. {len(FROZEN_STAGES)}, found {init['frozen_stages']!r}"
        )
    if init["encoder_lr"] < 0:
        raise ConfigError(f"config key 'init.encoder_lr': expected a factor >= 0, found {init['encoder_lr']!r}")


def unlabelled_roots(cfg: dict[str, Any]) -> list[str]:
    """The chip dataset folders of ``data.unlabelled`` (one folder or a list; none → [])."""
    value = cfg["data"]["unlabelled"]
    roots = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(roots, list) or not all(isinstance(r, str) and r for r in roots):
        raise ConfigError(
            f"config key 'data.unlabelled': expected a chip dataset folder or a list of folders, found {value!r}"
        )
    return roots


def _check_unlabelled(cfg: dict[str, Any]) -> None:
    if unlabelled_roots(cfg) and not configure_losses(cfg).kd.enabled:
        raise ConfigError(
            "config key 'data.unlabelled': unlabelled imagery is trained by distillation only; "
            "turn on kd.soft and/or kd.feature (with kd.det_teacher and kd.seg_teacher)"
        )


RESUME_FREE_KEYS = frozenset(
    {"runtime.device", "runtime.out", "runtime.tensorboard", "runtime.log_every", "data.num_workers"}
)
"""Keys a resumed run may change: where it runs and how it logs, never what it computes (a changed epoch count or
learning rate bends the cosine schedule; a changed batch size or seed, the batch stream)."""


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out |= _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def resume_differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key → (saved, current) for every key outside :data:`RESUME_FREE_KEYS` whose value differs.

    A key the saved run does not have (added by a later pmtl) counts as its default, so upgrading pmtl mid-run
    resumes unless the run changes what it computes."""
    old, new = _flatten(DEFAULTS) | _flatten(saved), _flatten(current)
    keys = sorted((set(old) | set(new)) - RESUME_FREE_KEYS)
    return {key: (old.get(key), new.get(key)) for key in keys if old.get(key) != new.get(key)}


def check_resume_config(saved: dict[str, Any], current: dict[str, Any], checkpoint: str | Path) -> None:
    """Refuse to resume with a configuration other than the one the checkpoint was trained with."""
    changed = resume_differences(saved, current)
    if changed:
        parts = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items())
        raise ConfigError(
            f"--resume ({checkpoint}): expected the configuration the run was started with, found changes: {parts}; "
            "resume with the saved values or start a new run in another output folder"
        )


def validate_config(raw: dict[str, Any]) -> dict[str, Any]:
    """Merge ``raw`` over the defaults and check every key and type; raise ConfigError naming the key."""
    cfg = _check(raw, DEFAULTS, "")
    _semantic_checks(cfg)
    _check_unlabelled(cfg)
    return cfg


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings (value parsed as YAML) to a raw config dict."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value, e.g. optim.lr=0.005")
        key, text = item.split("=", 1)
        value = yaml.safe_load(text) if text != "" else None
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a mapping")
        node[parts[-1]] = value
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML config (``None`` → defaults only), apply overrides and validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"config file '{path}': expected a mapping at the top level, found {type(raw).__name__}")
    return validate_config(apply_overrides(raw, overrides or []))
