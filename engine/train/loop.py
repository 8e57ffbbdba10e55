"""The training loop: teachers, single-task baselines, partial MTL and distilled students share it.

One iteration takes one batch of every stream (detection, segmentation, whichever tasks are trained, plus the user's
unlabelled imagery with ``data.unlabelled``), back-propagates each pass's loss (the shared encoder accumulates the
gradients) and makes ONE optimizer step (paper §2). Data
order and augmentation are seeded by (seed, epoch), so a run resumed from its last checkpoint repeats exactly what
the uninterrupted run would have done.

Reading order: :func:`train` → :func:`train_epoch` → :func:`train_step` (→ objectives.batch_objective), then
:func:`validate`, :func:`epoch_row` and :func:`save_epoch`. Set-up lives in engine.train.setup.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.core.atomic import write_json_atomic
from engine.core.classes import tables_from_manifest
from engine.core.errors import ConfigError, PmtlError
from engine.core.modelio import HeadSpec, class_thresholds, heads_to_checkpoint
from engine.core.progress import Progress, check_cancel
from engine.evaluate.run import evaluate_model
from engine.models.checkpoint import capture_rng, inference_state, save_checkpoint
from engine.train import objectives as O
from engine.train.config import unlabelled_roots
from engine.train.distributed import DistInfo, all_reduce_mean, barrier
from engine.train.schedule import lr_factor
from engine.train.setup import Normalization, Run, RunState, batch_streams, build_run, restore_state
from engine.viz.curves import plot_curves


class NonFiniteLoss(PmtlError, FloatingPointError):
    """A loss term became NaN/inf; the run stops and the last good checkpoint stays."""


@dataclass
class TrainResult:
    out_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EpochLosses:
    """Running sums of every loss term over an epoch, kept on the device (no host sync per step)."""

    names: list[str] = field(default_factory=list)
    sums: torch.Tensor | None = None
    steps: int = 0
    images: int = 0
    started: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0
    """Training time of the epoch (validation excluded), set when the epoch ends."""
    points: list[dict[str, float]] = field(default_factory=list)
    """Per-step curve points: every ``runtime.log_every`` steps, the mean of each term since the previous point."""
    _marked: tuple[torch.Tensor | None, int] = (None, 0)

    def add(self, terms: dict[str, torch.Tensor], images: int) -> None:
        if not self.names:
            self.names = list(terms)
        values = torch.stack([terms[name].detach().float() for name in self.names])
        self.sums = values if self.sums is None else self.sums + values
        self.steps += 1
        self.images += images

    def means(self) -> torch.Tensor:
        assert self.sums is not None
        return self.sums / self.steps

    def mark(self, step: int) -> None:
        """Add a curve point at optimizer step ``step`` (called where the running means are synced anyway)."""
        assert self.sums is not None
        previous, count = self._marked
        window = self.sums - previous if previous is not None else self.sums
        values = (window / max(1, self.steps - count)).tolist()
        self.points.append({"step": step, **dict(zip(self.names, values))})
        self._marked = (self.sums.clone(), self.steps)


def _tensorboard(out_dir: Path) -> Any:
    """Optional TensorBoard logging (``runtime.tensorboard: true``) into OUT/tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError(
            "config key 'runtime.tensorboard' is true but the tensorboard package is not installed; "
            "run `.venv/bin/pip install tensorboard` or set runtime.tensorboard=false"
        ) from exc
    return SummaryWriter(log_dir=str(out_dir / "tensorboard"))


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _check_finite(means: dict[str, float], step: int, info: DistInfo, device: torch.device) -> None:
    """Stop on a NaN/inf loss, naming the term; every rank stops together under DDP."""
    bad = [name for name, value in means.items() if not math.isfinite(value)]
    flag = all_reduce_mean(torch.tensor([float(bool(bad))], device=device), info) if info.enabled else None
    if bad or (flag is not None and flag.item() > 0):
        name = bad[0] if bad else "(on another rank)"
        value = means.get(name, float("nan"))
        raise NonFiniteLoss(f"loss term '{name}' is {value} at step {step}; stopping (last good checkpoint kept)")


def _select_score(metrics: dict[str, Any], select: str, tasks: list[str]) -> float:
    if select == "auto":
        select = "mean" if len(tasks) == 2 else tasks[0]
    det, seg = metrics.get("det_map", 0.0), metrics.get("seg_miou", 0.0)
    return {"det": det, "seg": seg, "mean": 0.5 * (det + seg)}[select]


def prepare_batch(
    run: Run, stream: str, batch: dict[str, Any]
) -> tuple[torch.Tensor, dict[str, Any], dict[str, torch.Tensor]]:
    """Move a batch to the device; photometric jitter (train mode), then each network's view of the jittered
    images (``run.views``): the student's input and, with distillation, each teacher's (its bands, its mean/std)."""
    batch = _to_device(batch, run.device)
    unit = run.device_aug[stream].unit(batch["image"], generator=run.aug_generator)
    seen = {who: view(unit) for who, view in run.views[stream].items()}
    if run.channels_last:
        seen = {who: x.contiguous(memory_format=torch.channels_last) for who, x in seen.items()}
    images = seen.pop("student")
    return images, batch, seen


def stream_loss_terms(
    run: Run, stream: str, images: torch.Tensor, batch: dict[str, Any], teacher_images: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Every loss term of one prepared batch of ``stream`` (:func:`prepare_batch`), under the run's autocast."""
    with run.autocast():
        return O.batch_objective(
            run.nets.model,
            stream,
            images,
            batch,
            run.nets.teachers,
            run.settings,
            run.anchors_for,
            tuple(run.nets.model_cfg.box_variances),
            teacher_images,
        )


def set_learning_rate(run: Run, step: int) -> None:
    optim_cfg = run.cfg["optim"]
    factor = lr_factor(
        step, run.total_steps, optim_cfg["warmup_iters"], optim_cfg["warmup_factor"], optim_cfg["min_lr_ratio"]
    )
    for group in run.optimizer.param_groups:
        group["lr"] = optim_cfg["lr"] * factor * group.get("lr_scale", 1.0)


def train_step(
    run: Run, step: int, streams: dict[str, Iterator[dict[str, torch.Tensor]]]
) -> tuple[dict[str, torch.Tensor], int]:
    """ONE optimizer step over one batch of every stream; returns its loss terms and the images it saw.

    Each stream's loss is back-propagated on its own (the encoder accumulates the gradients); under DDP only the
    last backward all-reduces (``no_sync`` before), so the step costs one gradient exchange.
    """
    set_learning_rate(run, step)
    run.optimizer.zero_grad(set_to_none=True)
    terms: dict[str, torch.Tensor] = {}
    seen = 0
    for index, stream in enumerate(run.streams):
        images, batch, teacher_images = prepare_batch(run, stream, next(streams[stream]))
        last = index == len(run.streams) - 1
        sync = contextlib.nullcontext() if not run.info.enabled or last else run.nets.model.no_sync()
        with sync:
            stream_terms = stream_loss_terms(run, stream, images, batch, teacher_images)
            sum(stream_terms.values()).backward()
        terms |= stream_terms
        seen += images.shape[0]
    grad_clip = run.cfg["optim"]["grad_clip"]
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(run.nets.wrapped.parameters(), grad_clip)
    run.optimizer.step()
    if run.ema is not None:
        run.ema.update(run.nets.student)
    return terms, seen


def report_progress(
    run: Run, state: RunState, epoch: int, it: int, losses: EpochLosses, progress: Progress | None
) -> None:
    """Every ``runtime.log_every`` steps: stop on a non-finite loss (one host sync) and report the running means."""
    means = losses.means().tolist()
    _check_finite(dict(zip(losses.names, means)), state.step, run.info, run.device)
    if progress is None:
        return
    rate = losses.images * run.info.world_size / max(1e-9, time.perf_counter() - losses.started)
    parts = " ".join(f"{k}={v:.3f}" for k, v in zip(losses.names, means))
    progress.report(
        (epoch * run.iters + it + 1) / run.total_steps,
        f"epoch {epoch + 1}/{run.cfg['optim']['epochs']} {parts} {rate:.1f} img/s",
    )


def freeze_encoder_norms(net: nn.Module) -> None:
    """Put the encoder's (backbone + neck) BatchNorm layers in eval mode: they normalise with their running
    statistics and stop updating them; their scale and shift still train.

    Partial multi-task training runs each domain's batch through the encoder on its own, so in train mode every
    BatchNorm normalises a batch with that domain's statistics, while its running statistics (what inference uses)
    average both domains: the deployed model sees features scaled as it never trained on them (on the demo's test
    chips, segmentation mIoU 0.51 with the running statistics vs 0.57 with per-domain batch statistics). Freezing
    them for the last epochs lets the network adapt to the statistics it is deployed with."""
    for part in (net.backbone, net.neck):
        for module in part.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def train_epoch(
    run: Run,
    state: RunState,
    epoch: int,
    streams: dict[str, Iterator[dict[str, torch.Tensor]]],
    progress: Progress | None,
) -> EpochLosses:
    """``run.iters`` optimizer steps; advances ``state.step``; returns the epoch's summed loss terms."""
    run.nets.wrapped.train()
    if epoch >= run.cfg["optim"]["epochs"] - run.cfg["optim"]["freeze_encoder_bn_epochs"]:
        freeze_encoder_norms(run.nets.student)
    for aug in run.device_aug.values():
        aug.train(run.cfg["data"]["augment"])
    run.aug_generator.manual_seed(run.stream_seed[run.streams[0]] * 7919 + epoch)
    losses = EpochLosses()
    for it in range(run.iters):
        check_cancel(progress)
        terms, seen = train_step(run, state.step, streams)
        state.step += 1
        losses.add(terms, seen)
        if it % run.cfg["runtime"]["log_every"] == 0 or it == run.iters - 1:
            report_progress(run, state, epoch, it, losses, progress)
            losses.mark(state.step)
        elif progress is not None:  # every step moves the bar (no message: no device sync)
            progress.report((epoch * run.iters + it + 1) / run.total_steps)
    losses.seconds = time.perf_counter() - losses.started
    return losses


def validate(run: Run) -> dict[str, Any]:
    """Metrics of the EMA weights on the validation split of each trained task (sharded across ranks)."""
    data_cfg = run.cfg["data"]
    return evaluate_model(
        run.eval_net,
        det_root=data_cfg["det"] if "det" in run.tasks else None,
        seg_root=data_cfg["seg"] if "seg" in run.tasks else None,
        split=data_cfg["val_split"],
        device=run.device,
        batch_size=run.per_rank_batch,
        score_thresh=run.cfg["eval"]["score_thresh"],
        nms_iou=run.cfg["eval"]["nms_iou"],
        max_chips=data_cfg["max_val_chips"],
        progress=None,
        shard=(run.info.rank, run.info.world_size),
        normalization=run.norm,
        bands=run.manifests[run.tasks[0]]["bands"],
    )


def epoch_row(run: Run, state: RunState, epoch: int, losses: EpochLosses, metrics: dict[str, Any]) -> dict[str, Any]:
    """One line of metrics.jsonl: epoch, step, lr, throughput, mean loss terms (all ranks), validation scalars."""
    means = all_reduce_mean(losses.means(), run.info).tolist()
    return {
        "epoch": epoch + 1,
        "step": state.step,
        "lr": run.optimizer.param_groups[0]["lr"],
        "train_img_per_s": losses.images * run.info.world_size / max(1e-9, losses.seconds),
        **{f"loss_{k}": v for k, v in zip(losses.names, means)},
        **{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        # not "det_…": those names are the scalar metrics (logs, tables, the CLI's summary)
        **({"class_score_thresh": class_score_thresh(metrics["det"])} if "det" in metrics else {}),
        "steps": losses.points,
    }


def class_score_thresh(det_metrics: dict[str, Any]) -> dict[str, float | None]:
    """Per detection class, the score threshold with the best F1 on the validation split (IoU 0.5): what the
    exported model shows on a map by default (one threshold for all classes hides the small, low-scored ones)."""
    return {name: c["class_score_thresh"] for name, c in det_metrics["per_class"].items()}


def record_epoch(run: Run, state: RunState, row: dict[str, Any], metrics: dict[str, Any]) -> bool:
    """Append the row to the history and keep the best epoch (``eval.select``); True when this one is best."""
    state.history.append(row)
    state.epoch = int(row["epoch"])
    score = _select_score(metrics, run.cfg["eval"]["select"], run.tasks)
    if score > state.best_score:
        state.best_score, state.best_metrics = score, dict(row)
        return True
    return False


def checkpoint_payload(run: Run, state: RunState, row: dict[str, Any]) -> dict[str, Any]:
    """last.pt: everything a resumed run needs (weights, EMA, adapters, optimiser, RNGs, progress, config)."""
    return {
        "model_config": run.nets.model_cfg.to_dict(),
        "model": run.nets.student.state_dict(),
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "adapters": run.nets.adapters.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "rng": capture_rng(),
        "epoch": state.epoch,
        "step": state.step,
        "best": {"score": state.best_score, "metrics": state.best_metrics},
        "history": state.history,
        "config": run.cfg,
        "metadata": {**checkpoint_metadata(run.cfg, run.manifests, row, run.norm), **run.nets.init_metadata},
    }


def save_epoch(
    run: Run, state: RunState, row: dict[str, Any], improved: bool, writer: Any, progress: Progress | None
) -> None:
    """Rank 0: best.pt (when improved), last.pt, a metrics.jsonl line, progress event, TensorBoard scalars."""
    if run.info.is_main:
        payload = checkpoint_payload(run, state, row)
        if improved:  # best first: a crash in between never leaves last.pt pointing at an unsaved best
            save_checkpoint(run.out_dir / "best.pt", inference_payload(payload))
        save_checkpoint(run.out_dir / "last.pt", payload)
        with (run.out_dir / "metrics.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float))}  # curve points etc. stay in files
        if progress is not None and hasattr(progress, "emit"):
            progress.emit("metrics", **scalars)
        if writer is not None:
            for key, value in scalars.items():
                writer.add_scalar(key, value, state.step)
            writer.flush()
    barrier(run.info)


def finish(run: Run, state: RunState, writer: Any) -> TrainResult:
    """Close the logs; rank 0 writes history.json and curves.png."""
    if writer is not None:
        writer.close()
    if run.info.is_main:
        write_json_atomic(run.out_dir / "history.json", state.history)
        with contextlib.suppress(Exception):
            plot_curves(state.history, run.out_dir / "curves.png")
    return TrainResult(run.out_dir, run.out_dir / "best.pt", run.out_dir / "last.pt", state.best_metrics, state.history)


def train(cfg: dict[str, Any], progress: Progress | None = None, resume: bool = False) -> TrainResult:
    """Train one model as ``cfg`` says; returns where the checkpoints are and the best validation metrics."""
    run = build_run(cfg)
    state = restore_state(run, resume)
    writer = _tensorboard(run.out_dir) if cfg["runtime"]["tensorboard"] and run.info.is_main else None
    if run.info.is_main:
        write_json_atomic(run.out_dir / "config.json", cfg)
    streams = batch_streams(run, state.epoch)
    for epoch in range(state.epoch, cfg["optim"]["epochs"]):
        losses = train_epoch(run, state, epoch, streams, progress)
        metrics = validate(run)
        row = epoch_row(run, state, epoch, losses, metrics)
        improved = record_epoch(run, state, row, metrics)
        save_epoch(run, state, row, improved, writer, progress)
    return finish(run, state, writer)


def inference_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """best.pt: only what evaluation and export need (averaged weights, config, metadata): a third of last.pt."""
    keep = ("model_config", "epoch", "step", "best", "config", "metadata")
    return {**{k: payload[k] for k in keep}, "model": inference_state(payload), "ema": None}


def class_metadata(manifests: dict[str, Any], thresholds: dict[str, float | None] | None = None) -> dict[str, Any]:
    """The checkpoint keys of each head (:func:`engine.core.modelio.heads_to_checkpoint`): classes and colours from
    its own task's chip dataset, and the detection classes' validation-F1 ``thresholds`` (class name -> value)."""
    heads: dict[str, HeadSpec] = {}
    if "seg" in manifests:
        seg, _ = tables_from_manifest(manifests["seg"])
        heads["seg"] = HeadSpec(seg.names, seg.colors)
    if "det" in manifests:
        _, det = tables_from_manifest(manifests["det"])
        heads["det"] = HeadSpec(det.names, det.colors, class_thresholds(thresholds, det.names))
    return heads_to_checkpoint(heads)


def training_domains(manifests: dict[str, Any]) -> list[dict[str, Any]]:
    """Each trained task's imagery domain: dataset, GSD (m), value scaling and chip size."""
    return [
        {
            "task": task,
            "dataset": m["dataset"],
            "gsd": float(m["gsd"]),
            "value_scaling": dict(m["value_scaling"]),
            "chip_size": int(m["chip_size"]),
        }
        for task, m in manifests.items()
    ]


def checkpoint_metadata(
    cfg: dict[str, Any],
    manifests: dict[str, Any],
    row: dict[str, Any],
    norm: Normalization,
) -> dict[str, Any]:
    """What export needs to describe the model: classes, bands, scaling, the ONE input normalisation every stream
    was trained with (so both heads of the deployed model see inputs as in training), provenance, metrics.
    ``gsd``, ``value_scaling`` and ``chip_size`` are the first dataset's (older readers); ``domains`` records every
    trained domain's GSD and value scaling, which predict reads (a 5 cm + 9 cm model resamples neither)."""
    first = next(iter(manifests.values()))
    mean, std = norm
    return {
        "name": cfg["name"],
        "tasks": list(cfg["tasks"]),
        "bands": first["bands"],
        "value_scaling": first["value_scaling"],
        "normalization": cfg["data"]["normalization"],
        "mean": list(mean),
        "std": list(std),
        "gsd": first["gsd"],
        "chip_size": first["chip_size"],
        **class_metadata(manifests, row.get("class_score_thresh")),
        "datasets": {
            task: {"dataset": m["dataset"], "gsd": m["gsd"], "bands": m["bands"]} for task, m in manifests.items()
        },
        "domains": training_domains(manifests),
        "kd": {
            "soft": cfg["kd"]["soft"],
            "feature": cfg["kd"]["feature"],
            "det_teacher": cfg["kd"]["det_teacher"],
            "seg_teacher": cfg["kd"]["seg_teacher"],
        },
        "validation": {k: v for k, v in row.items() if k.startswith(("det_", "seg_"))},  # scalars only (epoch_row)
        **({"unlabelled": unlabelled_roots(cfg)} if unlabelled_roots(cfg) else {}),
    }
