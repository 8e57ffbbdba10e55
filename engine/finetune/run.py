"""One fine-tuning run: chip the labels at the model's GSD → score the starting model on the held-out blocks →
train from the checkpoint (short AdamW schedule, frozen first stages, slower encoder, augmentation) → score again →
export OUT/model.onnx. The held-out blocks (split ``val``) are scored once at the end of the single epoch, so no
choice was made on them: best.pt is the final (EMA) model."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.core.atomic import write_json_atomic
from engine.core.errors import ConfigError
from engine.core.progress import Progress, ScaledProgress, check_cancel
from engine.finetune.options import FinetuneOptions
from engine.finetune.prepare import chip_labels, resolve_checkpoint

SCORES = ("det_ap50", "det_map", "seg_miou")
EXPORT_TILE = 256
"""Tile size (px) of the exported model, or the chip size when larger."""


@dataclass
class FinetuneResult:
    """What a run wrote and scored: before/after on the held-out blocks (scalar metrics ``det_*``/``seg_*``)."""

    out_dir: str
    model: str
    checkpoint: str
    start: str
    before: dict[str, float]
    after: dict[str, float]
    chips: dict[str, int]
    gsd: float
    seconds: dict[str, float] = field(default_factory=dict)

    def format(self) -> str:
        lines = [f"held-out blocks ({self.chips.get('val', 0)} chips at {self.gsd:g} m): before → after"]
        for key in SCORES:
            if key in self.after:
                lines.append(f"  {key}: {self.before.get(key, 0.0):.3f} → {self.after[key]:.3f}")
        lines.append(f"model: {self.model} (checkpoint {self.checkpoint})")
        return "\n".join(lines)


def training_tasks(task: str) -> list[str]:
    return ["det", "seg"] if task == "both" else [task]


def config_overrides(opts: FinetuneOptions, checkpoint: Path, chips: Path, loss: dict[str, Any]) -> dict[str, Any]:
    """The training config of a fine-tuning run: one epoch of ``steps`` (no epoch is chosen on held-out scores)."""
    tasks = training_tasks(opts.task)
    return {
        "name": f"finetune_{Path(opts.out).name}",
        "tasks": tasks,
        "data": {
            **{t: str(chips) for t in tasks},
            "batch_size": opts.batch_size,
            "num_workers": 0,
            "augment": True,
        },
        "loss": loss,
        "init": {
            "checkpoint": str(checkpoint),
            "untrained_heads": opts.untrained_heads,
            "frozen_stages": opts.frozen_stages,
            "encoder_lr": opts.encoder_lr,
            "allow_new_gsd": opts.gsd is not None,
        },
        "optim": {
            "name": "adamw",
            "lr": opts.lr,
            "weight_decay": 0.01,
            "epochs": 1,
            "iters_per_epoch": opts.steps,
            "warmup_iters": max(1, opts.steps // 10),
        },
        "ema": {"enabled": True, "decay": 0.99, "tau": 20.0},
        "runtime": {"device": opts.device, "seed": opts.seed, "out": str(opts.out), "log_every": 10},
    }


def training_config(opts: FinetuneOptions, checkpoint: Path, payload: dict[str, Any], chips: Path) -> dict[str, Any]:
    """The validated config; the loss settings of the starting run carry over (minus distillation)."""
    from engine.train.config import DEFAULTS, validate_config

    loss = {k: v for k, v in ((payload.get("config") or {}).get("loss") or {}).items() if k in DEFAULTS["loss"]}
    return validate_config(config_overrides(opts, checkpoint, chips, loss))


def start_network(cfg: dict[str, Any]) -> tuple[Any, tuple[tuple[float, ...], tuple[float, ...]]]:
    """The starting model mapped onto the run's class table (new classes fresh, seeded as training starts them)
    and the input normalisation the run trains with."""
    import torch

    from engine.data import transforms as T
    from engine.data.chipstore import open_chip_dataset
    from engine.train import warmstart as W
    from engine.train.setup import student_network

    torch.manual_seed(int(cfg["runtime"]["seed"]))
    manifests = {t: open_chip_dataset(cfg["data"][t]).manifest for t in cfg["tasks"]}
    _, net, start, _ = student_network(cfg, manifests)
    return net, W.normalization(start, manifests, T.run_normalization(list(manifests.values()), "pooled"))


def score_start(cfg: dict[str, Any], progress: Progress | None) -> dict[str, float]:
    """The starting model (:func:`start_network`) scored on the held-out blocks."""
    from engine.evaluate.run import evaluate_model

    net, norm = start_network(cfg)
    metrics = evaluate_model(
        net, cfg["data"].get("det"), cfg["data"].get("seg"), split="val", batch_size=cfg["data"]["batch_size"],
        normalization=norm, progress=progress,
    )  # fmt: skip
    return scalars(metrics)


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k.startswith(("det_", "seg_")) and isinstance(v, (int, float))}


def _start_geometry(opts: FinetuneOptions, meta: dict[str, Any]) -> tuple[float, int, str | None]:
    """(GSD, chip size, class name) of the run: the options', else the starting model's."""
    gsd = opts.gsd or meta.get("gsd")
    if not gsd:
        raise ConfigError(f"--gsd: the checkpoint {opts.checkpoint} records no GSD; give the one to train at")
    size = opts.size or int(meta.get("chip_size") or 256)
    name = opts.class_name
    if not opts.class_field and not name:
        name = (meta.get("det_classes") or ["object"])[0]
    return float(gsd), size, name


def finetune(opts: FinetuneOptions, progress: Progress | None = None) -> FinetuneResult:
    """Run the whole loop of the module docstring; writes OUT/finetune.json and returns the same."""
    from engine.export.onnx_export import export_checkpoint
    from engine.train.loop import train

    opts.validate()
    if (Path(opts.out) / "last.pt").exists():
        raise ConfigError(f"--out {opts.out}: already holds a training run (last.pt); choose an empty folder")
    clock = {"started": time.perf_counter()}
    checkpoint, payload = resolve_checkpoint(opts.checkpoint)
    gsd, size, class_name = _start_geometry(opts, payload["metadata"])
    chips, summary = chip_labels(opts, gsd, size, class_name, ScaledProgress(progress, 0.0, 0.1))
    cfg = training_config(opts, checkpoint, payload, chips)
    clock["chipped"] = time.perf_counter()
    before = score_start(cfg, ScaledProgress(progress, 0.1, 0.15))
    clock["scored"] = time.perf_counter()
    result = train(cfg, progress=ScaledProgress(progress, 0.15, 0.95))
    clock["trained"] = time.perf_counter()
    check_cancel(progress)
    model = Path(opts.out) / "model.onnx"
    export_checkpoint(result.best_checkpoint, model, tile_size=max(EXPORT_TILE, size))
    clock["exported"] = time.perf_counter()
    out = FinetuneResult(
        out_dir=str(opts.out), model=str(model), checkpoint=str(result.best_checkpoint), start=str(checkpoint),
        before=before, after=scalars(result.best_metrics), chips=dict(summary["chips_per_split"]), gsd=gsd,
        seconds=_durations(clock),
    )  # fmt: skip
    write_json_atomic(Path(opts.out) / "finetune.json", {**asdict(out), "options": asdict(opts)})
    if progress is not None:
        progress.report(1.0, "done")
    return out


def _durations(clock: dict[str, float]) -> dict[str, float]:
    steps = list(clock.items())
    return {name: round(t - steps[i][1], 2) for i, (name, t) in enumerate(steps[1:])}
