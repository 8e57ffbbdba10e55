"""Everything a training run builds once before its first step: model, teachers, optimiser, data streams, state.

:func:`build_run` returns a :class:`Run` (what stays fixed during the run) and :func:`restore_state` a
:class:`RunState` (what each epoch advances, and what a checkpoint saves). The loop (engine.train.loop) only reads
them, so each of its pieces can be read on its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from engine.core.bands import bands_by_name, input_order
from engine.core.errors import ConfigError, param_ref
from engine.core.settings import Objectives, configure_losses
from engine.data import datasets as D
from engine.data import transforms as T
from engine.data.chipstore import open_chip_dataset
from engine.losses import class_balance_weights
from engine.models import build_model, load_model_config
from engine.models.adapters import FeatureAdapters
from engine.models.checkpoint import load_checkpoint, model_from_checkpoint, restore_rng
from engine.models.config import ModelConfig
from engine.train import objectives as O
from engine.train import warmstart as W
from engine.train.config import check_resume_config, unlabelled_roots
from engine.train.distributed import DistInfo, init_distributed, pick_device
from engine.train.schedule import ModelEMA, build_optimizer, cpu_has_fast_bf16

Normalization = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass
class Run:
    """What one training run holds from start to end (built once by :func:`build_run`)."""

    cfg: dict[str, Any]
    info: DistInfo
    device: torch.device
    out_dir: Path
    streams: list[str]
    """Batch kinds drawn for every optimizer step, in order (a subset of objectives.STREAMS)."""
    tasks: list[str]
    manifests: dict[str, dict[str, Any]]
    """Chip dataset manifest of each trained task."""
    norm: Normalization
    settings: Objectives
    nets: Networks
    optimizer: torch.optim.Optimizer
    ema: ModelEMA | None
    datasets: dict[str, Any]
    device_aug: dict[str, T.DeviceAugment]
    views: dict[str, dict[str, T.BandView]]
    """Per stream, how each network sees its batches: ``student`` and each teacher task (:func:`input_views`)."""
    aug_generator: torch.Generator
    stream_seed: dict[str, int]
    per_rank_batch: int
    iters: int
    channels_last: bool
    amp: bool
    anchors: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        return self.iters * int(self.cfg["optim"]["epochs"])

    @property
    def eval_net(self) -> nn.Module:
        """The weights validation and checkpoints use: the EMA when kept."""
        return self.ema.module if self.ema is not None else self.nets.student

    def anchors_for(self, images: torch.Tensor) -> torch.Tensor:
        """The student's anchors for an input size (cached: every batch of a run has the chip size)."""
        key = (int(images.shape[-2]), int(images.shape[-1]))
        if key not in self.anchors:
            self.anchors[key] = self.nets.student.anchors_for(key, device=self.device)
        return self.anchors[key]

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast when ``runtime.amp`` on CUDA or a CPU with native bf16; nothing otherwise."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()


@dataclass
class RunState:
    """What each epoch advances; saved in last.pt and restored by ``--resume``."""

    epoch: int = 0
    step: int = 0
    best_score: float = -math.inf
    best_metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on norm layers and biases (REFERENCE §2)."""
    decay, no_decay = [], []
    for module in modules:
        for sub in module.modules():
            for name, param in sub.named_parameters(recurse=False):
                if not param.requires_grad:
                    continue
                is_norm = isinstance(sub, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm))
                (no_decay if is_norm or name == "bias" else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def load_teacher(path: str, device: torch.device, channels_last: bool, key: str) -> tuple[O.Teacher, int]:
    """A frozen teacher (EMA weights, eval mode, no gradients) with the bands and input normalisation it was
    trained with (its checkpoint metadata), and its feature width."""
    net, payload = model_from_checkpoint(path, device)
    net.requires_grad_(False)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    meta = payload.get("metadata") or {}
    if net.input_normalization is None:
        raise ConfigError(
            f"config key '{key}' ({path}): expected a checkpoint that records its input mean/std (metadata 'mean', "
            "'std'), found none; train the teacher with engine.train"
        )
    mean, std = (tuple(float(v) for v in values) for values in net.input_normalization)
    bands = tuple(meta["bands"]) if meta.get("bands") else None
    return O.Teacher(net=net, bands=bands, mean=mean, std=std), int(payload["model_config"].get("channels", 256))


def check_teachers(teachers: dict[str, O.Teacher], student_cfg: ModelConfig, kd: dict[str, Any]) -> None:
    """Each teacher must have the head it distils, and the detection teacher the student's anchor layout."""
    for task, key in (("det", "kd.det_teacher"), ("seg", "kd.seg_teacher")):
        tasks = teachers[task].net.cfg.tasks
        if task not in tasks:
            raise ConfigError(
                f"config key '{key}' ({kd[key.split('.')[1]]}): expected a {task} teacher, it has {list(tasks)}"
            )
    t_cfg = teachers["det"].net.cfg
    for field_name in ("anchor_base_size", "anchor_scales", "anchor_aspect_ratios", "box_variances", "in_channels"):
        if getattr(t_cfg, field_name) != getattr(student_cfg, field_name):
            raise ConfigError(
                f"config key 'kd.det_teacher' ({kd['det_teacher']}): soft detection KD pairs anchors one by one, "
                f"so '{field_name}' must match the student's {getattr(student_cfg, field_name)!r}, "
                f"found {getattr(t_cfg, field_name)!r}"
            )
    for task, key, size in (("det", "kd.det_teacher", "num_det_classes"), ("seg", "kd.seg_teacher", "num_seg_classes")):
        theirs, ours = getattr(teachers[task].net.cfg, size), getattr(student_cfg, size)
        if theirs != ours:
            raise ConfigError(
                f"config key '{key}' ({kd[key.split('.')[1]]}): the teacher has {theirs} {task} classes, the "
                f"student's {task} chip dataset has {ours}; train the teacher on chips with the same class table"
            )


def dataset_info(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Manifests of the trained tasks' chip datasets (they must agree on bands)."""
    info = {task: open_chip_dataset(cfg["data"][task]).manifest for task in cfg["tasks"]}
    bands = {task: len(m["bands"]) for task, m in info.items()}
    if len(set(bands.values())) > 1:
        raise ConfigError(
            f"config keys 'data.det'/'data.seg': chip datasets have different band counts {bands}; "
            "re-chip one of them with matching bands"
        )
    for task, manifest in info.items():
        labelled = manifest.get("task", "both")
        if labelled not in (task, "both"):
            raise ConfigError(
                f"config key 'data.{task}' ({cfg['data'][task]}): expected a chip dataset with {task} labels, "
                f"found one chipped for task {labelled!r}"
            )
    return info


def head_sizes(manifests: dict[str, Any]) -> dict[str, int]:
    """Classes per trained head, from the class table of that task's chip dataset."""
    sizes = {}
    if "det" in manifests:
        sizes["num_det_classes"] = len(manifests["det"]["det_classes"])
    if "seg" in manifests:
        sizes["num_seg_classes"] = len(manifests["seg"]["seg_classes"])
    return sizes


@dataclass
class Networks:
    """The networks of a run: the student, its feature adapters, the frozen teachers (built by
    :func:`build_networks`)."""

    model_cfg: ModelConfig
    student: nn.Module
    wrapped: O.StudentWithAdapters
    model: nn.Module
    """``wrapped``, or its DDP wrapper: what the forward passes call."""
    adapters: nn.ModuleDict
    teachers: dict[str, O.Teacher]
    start: W.WarmStart | None = None
    init_metadata: dict[str, Any] = field(default_factory=dict)
    """Checkpoint metadata from ``init.checkpoint`` (provenance, kept heads' classes); empty for a fresh run."""


def student_network(
    cfg: dict[str, Any], manifests: dict[str, dict[str, Any]]
) -> tuple[ModelConfig, nn.Module, W.WarmStart | None, dict[str, Any]]:
    """The student, fresh (``model``) or from ``init.checkpoint``; heads sized from the chip datasets' class tables.
    Returns its config, the network, the starting checkpoint (or None) and the metadata the start adds."""
    bands = len(next(iter(manifests.values()))["bands"])
    start = W.load_warm_start(cfg)
    if start is None:
        model_cfg = dataclasses.replace(
            load_model_config(cfg["model"]), tasks=tuple(cfg["tasks"]), in_channels=bands, **head_sizes(manifests)
        )
        return model_cfg, build_model(model_cfg), None, {}
    model_cfg = W.model_config(start, cfg, bands, head_sizes(manifests))
    student = build_model(model_cfg)
    report = W.apply_warm_start(start, student, cfg, manifests)
    return model_cfg, student, start, W.run_metadata(start, cfg, report)


def build_networks(
    cfg: dict[str, Any],
    settings: Objectives,
    manifests: dict[str, dict[str, Any]],
    info: DistInfo,
    device: torch.device,
    channels_last: bool,
) -> Networks:
    """Student (seeded: same initial weights on every rank; heads sized from the chip datasets' class tables),
    adaptation layers, frozen teachers, DDP wrapper."""
    model_cfg, student, start, init_metadata = student_network(cfg, manifests)
    teachers: dict[str, O.Teacher] = {}
    adapters = nn.ModuleDict()
    if settings.kd.enabled:
        for task in ("det", "seg"):
            key = f"kd.{task}_teacher"
            teachers[task], width = load_teacher(cfg["kd"][f"{task}_teacher"], device, channels_last, key)
            adapters[task] = FeatureAdapters(model_cfg.channels, width, kernel_size=cfg["kd"]["adapter_kernel"])
        check_teachers(teachers, model_cfg, cfg["kd"])
    wrapped = O.StudentWithAdapters(student, adapters)
    use_cuda = device.type == "cuda"
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
    return Networks(model_cfg, student, wrapped, model, adapters, teachers, start, init_metadata)


def optimizer_groups(nets: Networks, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Parameter groups; a run from ``init.checkpoint`` trains its encoder at ``init.encoder_lr`` × the rate."""
    decay = cfg["optim"]["weight_decay"]
    if nets.start is None:
        return param_groups([nets.wrapped], decay)
    student = nets.student
    encoder = param_groups([student.backbone, student.neck], decay)
    heads = [m for m in (student.det_head, student.seg_head, nets.adapters) if m is not None]
    return [{**g, "lr_scale": cfg["init"]["encoder_lr"]} for g in encoder] + param_groups(heads, decay)


def _require_a_batch(dataset: Any, key: str, root: Any, split: str, per_rank_batch: int, world_size: int) -> None:
    if len(dataset) // world_size < per_rank_batch:
        raise ConfigError(
            f"config key '{key}' ({root}): split '{split}' has {len(dataset)} chips, fewer than a batch of "
            f"{per_rank_batch} per process; lower data.batch_size or add chips"
        )


def training_datasets(
    cfg: dict[str, Any], tasks: list[str], model_bands: list[str], per_rank_batch: int, world_size: int
) -> dict[str, Any]:
    """The training split of each task's chip dataset and, with ``data.unlabelled``, the unlabelled imagery (its
    bands mapped to ``model_bands``); geometric augmentation when ``data.augment``."""
    data_cfg = cfg["data"]
    geometric = T.GeometricAugment() if data_cfg["augment"] else None
    kinds = {"det": D.DetectionChips, "seg": D.SegmentationChips}
    split = data_cfg["train_split"]
    datasets: dict[str, Any] = {}
    for task in tasks:
        datasets[task] = kinds[task](data_cfg[task], split, train=True, augment=geometric)
        _require_a_batch(datasets[task], f"data.{task}", data_cfg[task], split, per_rank_batch, world_size)
    roots = unlabelled_roots(cfg)
    if roots:
        datasets["unlabelled"] = D.UnlabelledChips(roots, split, model_bands, train=True, augment=geometric)
        _require_a_batch(datasets["unlabelled"], "data.unlabelled", roots, split, per_rank_batch, world_size)
    return datasets


def stream_manifest(run_manifests: dict[str, dict[str, Any]], datasets: dict[str, Any], stream: str) -> dict:
    """The manifest whose value scaling a stream's raw images use."""
    return datasets[stream].manifests[0] if stream == "unlabelled" else run_manifests[stream]


COUNT_CHUNK_PIXELS = 1 << 22
"""Pixels of label masks counted at a time (np.bincount widens them to 8-byte integers: 32 MiB a chunk)."""


def class_pixel_counts(masks: np.ndarray, num_classes: int) -> np.ndarray:
    """Labelled pixels per class in (N, H, W) uint8 masks (a memory map), counted a few chips at a time, so a
    large chip set is never widened (or read) whole; ignore (255) and out-of-table values are not counted."""
    per_chip = max(1, int(np.prod(masks.shape[1:])))
    step = max(1, COUNT_CHUNK_PIXELS // per_chip)
    counts = np.zeros(256, np.int64)
    for start in range(0, len(masks), step):
        counts += np.bincount(np.asarray(masks[start : start + step]).reshape(-1), minlength=256)
    return counts[:num_classes]


def batch_bands(run_manifests: dict[str, dict[str, Any]], datasets: dict[str, Any], stream: str) -> list[str]:
    """The band names of a stream's raw batches, as its dataset yields them."""
    return list(datasets[stream].bands if stream == "unlabelled" else run_manifests[stream]["bands"])


def teacher_order(have: list[str], teacher: O.Teacher, student_order: list[int], key: str) -> list[int]:
    """Which bands of a batch a teacher reads: its own product's, by name, where the batch has them (an RGBIR
    target holds both IRRG and RGB); else the student's input, as partial MTL feeds one model both domains."""
    own = bands_by_name(have, teacher.bands) if teacher.bands else None
    order = own if own is not None else student_order
    if len(order) != teacher.net.cfg.in_channels:
        raise ConfigError(
            f"config key '{key}': expected a teacher reading {len(order)} bands of {have}, found one with "
            f"{teacher.net.cfg.in_channels} bands {list(teacher.bands or [])}"
        )
    return order


def input_views(
    bands: dict[str, list[str]], model_bands: list[str], norm: Normalization, teachers: dict[str, O.Teacher]
) -> dict[str, dict[str, T.BandView]]:
    """Per stream (its batches' ``bands``): the student's view (the model's bands, by name where the stream has
    them, with the run's normalisation) and each teacher's (:func:`teacher_order`, its own normalisation)."""
    views: dict[str, dict[str, T.BandView]] = {}
    for stream, have in bands.items():
        order = input_order(have, model_bands)
        if order is None:
            raise ConfigError(
                f"config key 'data.{stream}': expected chips with the model's {len(model_bands)} bands "
                f"{model_bands}, found {have}; re-chip them with matching bands"
            )
        views[stream] = {"student": T.BandView(order, *norm)}
        for task, teacher in teachers.items():
            t_order = teacher_order(have, teacher, order, f"kd.{task}_teacher")
            views[stream][task] = T.BandView(t_order, teacher.mean or norm[0], teacher.std or norm[1])
    return views


def with_class_weights(settings: Objectives, cfg: dict[str, Any], tasks: list[str]) -> Objectives:
    """``settings`` with the segmentation CE's class weights when ``loss.seg_class_balance`` > 0, from the pixel
    counts of the segmentation training split's labels (every rank counts the same chips)."""
    power = settings.loss.seg_class_balance
    if power <= 0 or "seg" not in tasks:
        return settings
    store = open_chip_dataset(cfg["data"]["seg"])
    counts = class_pixel_counts(store.masks(cfg["data"]["train_split"]), len(store.seg_classes))
    if counts.sum() == 0:
        raise ConfigError(
            f"config key 'loss.seg_class_balance' needs labelled pixels: split '{cfg['data']['train_split']}' of "
            f"{cfg['data']['seg']} has none"
        )
    weights = class_balance_weights(counts.tolist(), power)
    return dataclasses.replace(settings, seg_class_weights=tuple(weights))


def build_run(cfg: dict[str, Any]) -> Run:
    """Set up a run from a validated config: devices, networks, optimiser, EMA, datasets, normalisation."""
    info = init_distributed()
    device = pick_device(cfg["runtime"]["device"], info)
    rt, optim_cfg, data_cfg = cfg["runtime"], cfg["optim"], cfg["data"]
    seed = int(rt["seed"])
    torch.manual_seed(seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    out_dir = Path(rt["out"])
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks: list[str] = list(cfg["tasks"])
    manifests = dataset_info(cfg)
    channels_last = device.type == "cuda" and rt["channels_last"]
    settings = with_class_weights(configure_losses(cfg), cfg, tasks)
    nets = build_networks(cfg, settings, {t: manifests[t] for t in tasks}, info, device, channels_last)
    optimizer = build_optimizer(optimizer_groups(nets, cfg), optim_cfg)
    ema = ModelEMA(nets.student, cfg["ema"]["decay"], cfg["ema"]["tau"]) if cfg["ema"]["enabled"] else None
    per_rank_batch = max(1, data_cfg["batch_size"] // info.world_size)
    model_bands = list(manifests[tasks[0]]["bands"])
    datasets = training_datasets(cfg, tasks, model_bands, per_rank_batch, info.world_size)
    streams = [*tasks, *(["unlabelled"] if "unlabelled" in datasets else [])]  # labelled first, in config order
    # batches and augmentation come from streams that differ per rank and per stream, fixed by (seed, epoch)
    stream_seed = {name: seed + 7_919 * info.rank + 104_729 * index for index, name in enumerate(streams)}
    # ONE normalisation, pooled over the labelled training sets, for every stream (unlabelled imagery included)
    norm = T.run_normalization(list(manifests.values()), data_cfg["normalization"])
    if nets.start is not None:  # the starting model's normalisation when the new chips have its bands
        norm = W.normalization(nets.start, manifests, norm)
    device_aug = {
        name: T.DeviceAugment.for_stream(stream_manifest(manifests, datasets, name), *norm).to(device)
        for name in streams
    }
    bands = {name: batch_bands(manifests, datasets, name) for name in streams}
    views = {
        stream: {who: view.to(device) for who, view in by.items()}
        for stream, by in input_views(bands, model_bands, norm, nets.teachers).items()
    }
    iters = optim_cfg["iters_per_epoch"] or max(  # an epoch is set by the labelled data; unlabelled cycles
        len(datasets[task]) // info.world_size // per_rank_batch for task in tasks
    )
    return Run(
        cfg=cfg,
        info=info,
        device=device,
        out_dir=out_dir,
        streams=streams,
        tasks=tasks,
        manifests=manifests,
        norm=norm,
        settings=settings,
        nets=nets,
        optimizer=optimizer,
        ema=ema,
        datasets=datasets,
        device_aug=device_aug,
        views=views,
        aug_generator=torch.Generator(device=device),
        stream_seed=stream_seed,
        per_rank_batch=per_rank_batch,
        iters=iters,
        channels_last=channels_last,
        amp=bool(rt["amp"]) and (device.type == "cuda" or (bool(rt["cpu_bf16"]) and cpu_has_fast_bf16())),
    )


def restore_state(run: Run, resume: bool) -> RunState:
    """A fresh state, or (``resume``) the weights, optimiser, EMA, RNGs and progress saved in OUT/last.pt."""
    last_path = run.out_dir / "last.pt"
    if not resume:
        return RunState()
    if not last_path.is_file():
        raise ConfigError(f"{param_ref('resume')}: no checkpoint at '{last_path}' to resume from")
    saved = load_checkpoint(last_path, map_location="cpu")
    check_resume_config(saved.get("config") or {}, run.cfg, last_path)
    run.nets.student.load_state_dict(saved["model"])
    if saved.get("adapters"):
        run.nets.adapters.load_state_dict(saved["adapters"])
    run.optimizer.load_state_dict(saved["optimizer"])
    if run.ema is not None and saved.get("ema"):
        run.ema.load_state_dict(saved["ema"])
    restore_rng(saved["rng"])
    return RunState(
        epoch=int(saved["epoch"]),
        step=int(saved["step"]),
        best_score=float(saved["best"]["score"]),
        best_metrics=dict(saved["best"]["metrics"]),
        history=list(saved.get("history", [])),
    )


def batch_streams(run: Run, start_epoch: int) -> dict[str, Iterator[dict[str, torch.Tensor]]]:
    """One endless, resumable loader per stream (seeded per stream and rank, sharded across ranks)."""
    return {
        name: D.make_train_loader(
            run.datasets[name],
            run.per_rank_batch,
            run.cfg["data"]["num_workers"],
            run.stream_seed[name],
            run.iters,
            start_epoch,
            run.info.rank,
            run.info.world_size,
        )
        for name in run.streams
    }
