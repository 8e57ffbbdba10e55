"""The training loop: teachers, single-task baselines, partial MTL and distilled students share it.

One iteration takes one detection batch and one segmentation batch (whichever tasks are trained), back-propagates
each pass's loss (the shared encoder accumulates both gradients) and makes ONE optimizer step (paper §2). Data
order and augmentation are seeded by (seed, epoch), so a run resumed from its last checkpoint repeats exactly what
the uninterrupted run would have done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from engine.core.atomic import write_json_atomic
from engine.core.classes import tables_from_manifest
from engine.core.errors import ConfigError, PmtlError
from engine.core.progress import Progress, check_cancel
from engine.core.settings import configure_losses
from engine.data import datasets as D
from engine.data import transforms as T
from engine.data.chipstore import open_chip_dataset
from engine.evaluate.run import evaluate_model
from engine.models import build_model, load_model_config
from engine.models.adapters import FeatureAdapters
from engine.train import objectives as O
from engine.train.checkpoint import (
    capture_rng,
    inference_state,
    load_checkpoint,
    model_from_checkpoint,
    restore_rng,
    save_checkpoint,
)
from engine.train.distributed import DistInfo, all_reduce_mean, barrier, init_distributed, pick_device
from engine.train.schedule import ModelEMA, build_optimizer, cpu_has_fast_bf16, lr_factor


class NonFiniteLoss(PmtlError, FloatingPointError):
    """A loss term became NaN/inf; the run stops and the last good checkpoint stays."""


@dataclass
class TrainResult:
    out_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def _param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on norm layers and biases (REFERENCE §2)."""
    decay, no_decay = [], []
    for module in modules:
        for sub in module.modules():
            for name, param in sub.named_parameters(recurse=False):
                if not param.requires_grad:
                    continue
                is_norm = isinstance(sub, nn.modules.batchnorm._BatchNorm | nn.GroupNorm | nn.LayerNorm)
                (no_decay if is_norm or name == "bias" else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _load_teacher(path: str, device: torch.device, channels_last: bool) -> tuple[O.Teacher, int]:
    """A frozen teacher (EMA weights, eval mode, no gradients) and its feature width."""
    net, payload = model_from_checkpoint(path, device)
    net.requires_grad_(False)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return O.Teacher(net=net), int(payload["model_config"].get("channels", 256))


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


def _check_teachers(teachers: dict[str, O.Teacher], student_cfg: Any, kd: dict[str, Any]) -> None:
    """Each teacher must have the head it distils, and the detection teacher the student's anchor layout."""
    for task, key in (("det", "kd.det_teacher"), ("seg", "kd.seg_teacher")):
        tasks = teachers[task].net.cfg.tasks
        if task not in tasks:
            raise ConfigError(
                f"config key '{key}' ({kd[key.split('.')[1]]}): expected a {task} teacher, it has {list(tasks)}"
            )
    for task, key, size in (("det", "kd.det_teacher", "num_det_classes"), ("seg", "kd.seg_teacher", "num_seg_classes")):
        theirs, ours = getattr(teachers[task].net.cfg, size), getattr(student_cfg, size)
        if theirs != ours:
            raise ConfigError(
                f"config key '{key}' ({kd[key.split('.')[1]]}): the teacher has {theirs} {task} classes, the "
                f"student's {task} chip dataset has {ours}; train the teacher on chips with the same class table"
            )
    t_cfg = teachers["det"].net.cfg
    for field_name in ("anchor_base_size", "anchor_scales", "anchor_aspect_ratios", "box_variances", "in_channels"):
        if getattr(t_cfg, field_name) != getattr(student_cfg, field_name):
            raise ConfigError(
                f"config key 'kd.det_teacher' ({kd['det_teacher']}): soft detection KD pairs anchors one by one, "
                f"so '{field_name}' must match the student's {getattr(student_cfg, field_name)!r}, "
                f"found {getattr(t_cfg, field_name)!r}"
            )


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


def _dataset_info(cfg: dict[str, Any]) -> dict[str, Any]:
    """Bands, classes and normalisation of the chip datasets (they must agree on bands)."""
    info: dict[str, Any] = {}
    for task in cfg["tasks"]:
        manifest = open_chip_dataset(cfg["data"][task]).manifest
        info[task] = manifest
    for task, manifest in info.items():
        labelled = manifest.get("task", "both")
        if labelled not in (task, "both"):
            raise ConfigError(
                f"config key 'data.{task}' ({cfg['data'][task]}): expected a chip dataset with {task} labels, "
                f"found one chipped with --task {labelled}"
            )
    bands = {task: len(m["bands"]) for task, m in info.items()}
    if len(set(bands.values())) > 1:
        raise ConfigError(
            f"config keys 'data.det'/'data.seg': chip datasets have different band counts {bands}; "
            "re-chip one of them with matching bands"
        )
    return info


def train(cfg: dict[str, Any], progress: Progress | None = None, resume: bool = False) -> TrainResult:
    """Train one model as ``cfg`` says; returns where the checkpoints are and the best validation metrics."""
    info = init_distributed()
    device = pick_device(cfg["runtime"]["device"], info)
    rt, optim_cfg, data_cfg, kd = cfg["runtime"], cfg["optim"], cfg["data"], cfg["kd"]
    seed = int(rt["seed"])
    torch.manual_seed(seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    out_dir = Path(rt["out"])
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks: list[str] = list(cfg["tasks"])
    manifests = _dataset_info(cfg)
    first = manifests[tasks[0]]
    use_cuda = device.type == "cuda"
    channels_last = use_cuda and rt["channels_last"]

    model_cfg = dataclasses.replace(
        load_model_config(cfg["model"]), tasks=tuple(tasks), in_channels=len(first["bands"]), **head_sizes(manifests)
    )
    student = build_model(model_cfg)
    settings = configure_losses(cfg)
    uses_kd = settings.kd.enabled
    teachers: dict[str, O.Teacher] = {}
    adapters = nn.ModuleDict()
    if uses_kd:
        for task in ("det", "seg"):
            teachers[task], width = _load_teacher(kd[f"{task}_teacher"], device, channels_last)
            adapters[task] = FeatureAdapters(model_cfg.channels, width, kernel_size=kd["adapter_kernel"])
        _check_teachers(teachers, model_cfg, kd)
    wrapped = O.StudentWithAdapters(student, adapters)
    if info.enabled and use_cuda:  # small per-GPU batches: batch statistics over all ranks
        wrapped = nn.SyncBatchNorm.convert_sync_batchnorm(wrapped)
        student = wrapped.student
    wrapped = wrapped.to(device)
    if channels_last:
        wrapped = wrapped.to(memory_format=torch.channels_last)
    model: nn.Module = wrapped
    if info.enabled:
        model = DistributedDataParallel(
            wrapped, device_ids=[device.index] if use_cuda else None, find_unused_parameters=True
        )
    optimizer = build_optimizer(_param_groups([wrapped], optim_cfg["weight_decay"]), optim_cfg)
    ema = ModelEMA(student, cfg["ema"]["decay"], cfg["ema"]["tau"]) if cfg["ema"]["enabled"] else None

    geometric = T.GeometricAugment() if data_cfg["augment"] else None
    datasets_train = {
        "det": lambda: D.DetectionChips(data_cfg["det"], data_cfg["train_split"], train=True, augment=geometric),
        "seg": lambda: D.SegmentationChips(data_cfg["seg"], data_cfg["train_split"], train=True, augment=geometric),
    }
    per_rank_batch = max(1, data_cfg["batch_size"] // info.world_size)
    train_sets = {task: datasets_train[task]() for task in tasks}
    for task, dataset in train_sets.items():
        if len(dataset) // info.world_size < per_rank_batch:
            raise ConfigError(
                f"config key 'data.{task}' ({data_cfg[task]}): split '{data_cfg['train_split']}' has {len(dataset)} "
                f"chips, fewer than a batch of {per_rank_batch} per process; lower data.batch_size or add chips"
            )
    # batches and augmentation come from streams that differ per rank and per task, fixed by (seed, epoch)
    stream_seed = {task: seed + 7_919 * info.rank + 104_729 * index for index, task in enumerate(tasks)}
    norm = T.run_normalization(list(manifests.values()), data_cfg["normalization"])
    device_aug = {task: T.DeviceAugment.for_stream(manifests[task], *norm).to(device) for task in tasks}
    aug_generator = torch.Generator(device=device)
    iters = optim_cfg["iters_per_epoch"] or max(
        len(dataset) // info.world_size // per_rank_batch for dataset in train_sets.values()
    )
    total_steps = iters * optim_cfg["epochs"]

    start_epoch, step, best_score, best_metrics = 0, 0, -math.inf, {}
    history: list[dict[str, Any]] = []
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if resume and last_path.is_file():
        state = load_checkpoint(last_path, map_location="cpu")
        student.load_state_dict(state["model"])
        if state.get("adapters"):
            adapters.load_state_dict(state["adapters"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        restore_rng(state["rng"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        best_score, best_metrics = float(state["best"]["score"]), dict(state["best"]["metrics"])
        history = list(state.get("history", []))
    elif resume:
        raise ConfigError(f"--resume: no checkpoint at '{last_path}' to resume from")

    writer = _tensorboard(out_dir) if rt["tensorboard"] and info.is_main else None
    if info.is_main:
        write_json_atomic(out_dir / "config.json", cfg)
    amp = rt["amp"] and (use_cuda or cpu_has_fast_bf16())
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    metrics_log = out_dir / "metrics.jsonl"
    eval_net = ema.module if ema is not None else student
    anchors_cache: dict[tuple[int, int], torch.Tensor] = {}
    variances = tuple(model_cfg.box_variances)

    def anchors_for(images: torch.Tensor) -> torch.Tensor:
        key = (int(images.shape[-2]), int(images.shape[-1]))
        if key not in anchors_cache:
            anchors_cache[key] = student.anchors_for(key, device=device)
        return anchors_cache[key]

    def prepare(task: str, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        batch = _to_device(batch, device)
        images = device_aug[task](batch["image"], generator=aug_generator)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, batch

    def objective(task: str, images: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return O.batch_objective(model, task, images, batch, teachers, settings, anchors_for, variances)

    streams = {
        task: D.make_train_loader(
            train_sets[task],
            per_rank_batch,
            data_cfg["num_workers"],
            stream_seed[task],
            iters,
            start_epoch,
            info.rank,
            info.world_size,
        )
        for task in tasks
    }
    for epoch in range(start_epoch, optim_cfg["epochs"]):
        wrapped.train()
        for aug in device_aug.values():
            aug.train(data_cfg["augment"])
        aug_generator.manual_seed(stream_seed[tasks[0]] * 7919 + epoch)
        names: list[str] = []
        sums = torch.zeros(0, device=device)  # running sums of every loss term, kept on the device (no syncs)
        seen, t0 = 0, time.perf_counter()
        for it in range(iters):
            check_cancel(progress)
            factor = lr_factor(
                step, total_steps, optim_cfg["warmup_iters"], optim_cfg["warmup_factor"], optim_cfg["min_lr_ratio"]
            )
            for group in optimizer.param_groups:
                group["lr"] = optim_cfg["lr"] * factor
            optimizer.zero_grad(set_to_none=True)
            step_terms: dict[str, torch.Tensor] = {}
            for index, task in enumerate(tasks):
                images, batch = prepare(task, next(streams[task]))
                sync = contextlib.nullcontext() if not info.enabled or index == len(tasks) - 1 else model.no_sync()
                with sync:
                    with autocast():
                        terms = objective(task, images, batch)
                    sum(terms.values()).backward()
                step_terms |= terms
                seen += images.shape[0]
            if optim_cfg["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(wrapped.parameters(), optim_cfg["grad_clip"])
            optimizer.step()
            if ema is not None:
                ema.update(student)
            step += 1
            if not names:
                names = list(step_terms)
                sums = torch.zeros(len(names), device=device)
            sums += torch.stack([step_terms[name].detach().float() for name in names])
            if it % rt["log_every"] == 0 or it == iters - 1:
                means = (sums / (it + 1)).tolist()  # one sync per log line
                _check_finite(dict(zip(names, means)), step, info, device)
                if progress is not None:
                    rate = seen * info.world_size / max(1e-9, time.perf_counter() - t0)
                    parts = " ".join(f"{k}={v:.3f}" for k, v in zip(names, means))
                    progress.report(
                        (epoch * iters + it + 1) / total_steps,
                        f"epoch {epoch + 1}/{optim_cfg['epochs']} {parts} {rate:.1f} img/s",
                    )
            elif progress is not None:  # every step moves the bar (no message: no device sync)
                progress.report((epoch * iters + it + 1) / total_steps)

        train_time = time.perf_counter() - t0
        metrics = evaluate_model(
            eval_net,
            det_root=data_cfg["det"] if "det" in tasks else None,
            seg_root=data_cfg["seg"] if "seg" in tasks else None,
            split=data_cfg["val_split"],
            device=device,
            batch_size=per_rank_batch,
            score_thresh=cfg["eval"]["score_thresh"],
            nms_iou=cfg["eval"]["nms_iou"],
            max_chips=data_cfg["max_val_chips"],
            progress=None,
            shard=(info.rank, info.world_size),
            normalization=norm,
        )
        epoch_means = all_reduce_mean(sums / iters, info).tolist()
        row = {
            "epoch": epoch + 1,
            "step": step,
            "lr": optimizer.param_groups[0]["lr"],
            "train_img_per_s": seen * info.world_size / max(1e-9, train_time),
            **{f"loss_{k}": v for k, v in zip(names, epoch_means)},
            **{k: v for k, v in metrics.items() if isinstance(v, int | float)},
        }
        history.append(row)
        score = _select_score(metrics, cfg["eval"]["select"], tasks)
        improved = score > best_score
        if improved:
            best_score, best_metrics = score, dict(row)
        if info.is_main:
            payload = {
                "model_config": model_cfg.to_dict(),
                "model": student.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "adapters": adapters.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": capture_rng(),
                "epoch": epoch + 1,
                "step": step,
                "best": {"score": best_score, "metrics": best_metrics},
                "history": history,
                "config": cfg,
                "metadata": checkpoint_metadata(cfg, manifests, row, norm),
            }
            if improved:  # best first: a crash in between never leaves last.pt pointing at an unsaved best
                save_checkpoint(best_path, inference_payload(payload))
            save_checkpoint(last_path, payload)
            with metrics_log.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
            if progress is not None and hasattr(progress, "emit"):
                progress.emit("metrics", **row)
            if writer is not None:
                for key, value in row.items():
                    writer.add_scalar(key, value, step)
                writer.flush()
        barrier(info)

    if writer is not None:
        writer.close()
    if info.is_main:
        write_json_atomic(out_dir / "history.json", history)
        with contextlib.suppress(Exception):
            plot_curves(history, out_dir / "curves.png")
    return TrainResult(out_dir, best_path, last_path, best_metrics, history)


def inference_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """best.pt: only what evaluation and export need (averaged weights, config, metadata): a third of last.pt."""
    keep = ("model_config", "epoch", "step", "best", "config", "metadata")
    return {**{k: payload[k] for k in keep}, "model": inference_state(payload), "ema": None}


def head_sizes(manifests: dict[str, Any]) -> dict[str, int]:
    """Classes per trained head, from the class table of that task's chip dataset."""
    sizes = {}
    if "det" in manifests:
        sizes["num_det_classes"] = len(manifests["det"]["det_classes"])
    if "seg" in manifests:
        sizes["num_seg_classes"] = len(manifests["seg"]["seg_classes"])
    return sizes


def class_metadata(manifests: dict[str, Any]) -> dict[str, Any]:
    """Names and colours of each head's classes, each from its own task's chip dataset."""
    out: dict[str, Any] = {}
    if "seg" in manifests:
        seg, _ = tables_from_manifest(manifests["seg"])
        out.update(seg_classes=list(seg.names), palette=[list(c) for c in seg.colours])
    if "det" in manifests:
        _, det = tables_from_manifest(manifests["det"])
        out.update(det_classes=list(det.names), det_palette=[list(c) for c in det.colours])
    return out


def checkpoint_metadata(
    cfg: dict[str, Any],
    manifests: dict[str, Any],
    row: dict[str, Any],
    norm: tuple[tuple[float, ...], tuple[float, ...]],
) -> dict[str, Any]:
    """What export needs to describe the model: classes, bands, scaling, the ONE input normalisation every stream
    was trained with (so both heads of the deployed model see inputs as in training), provenance, metrics."""
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
        **class_metadata(manifests),
        "datasets": {
            task: {"dataset": m["dataset"], "gsd": m["gsd"], "bands": m["bands"]} for task, m in manifests.items()
        },
        "kd": {
            "soft": cfg["kd"]["soft"],
            "feature": cfg["kd"]["feature"],
            "det_teacher": cfg["kd"]["det_teacher"],
            "seg_teacher": cfg["kd"]["seg_teacher"],
        },
        "validation": {k: v for k, v in row.items() if k.startswith(("det_", "seg_"))},
    }


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Loss and validation curves, one PNG per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.core.atomic import atomic_path

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
    for key in sorted({k for row in history for k in row if k.startswith("loss_")}):
        ax_loss.plot(epochs, [row.get(key, float("nan")) for row in history], label=key[5:])
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("training losses")
    ax_loss.legend(fontsize=7)
    for key in ("det_map", "det_ap50", "seg_miou", "seg_oa"):
        if any(key in row for row in history):
            ax_val.plot(epochs, [row.get(key, float("nan")) for row in history], label=key)
    ax_val.set_xlabel("epoch")
    ax_val.set_title("validation (EMA weights)")
    ax_val.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
