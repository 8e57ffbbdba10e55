"""Torch datasets over chip datasets (docs/ARCHITECTURE.md "Chip dataset format" / "Batches") and the loaders.

Arrays are memory-mapped lazily, once per process, and never pickled: DataLoader workers (fork or spawn) each open
their own read-only maps, so the page cache is shared and nothing large crosses process boundaries.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info

from engine.core.errors import ConfigError, InputError
from engine.data.chipstore import ChipDataset, open_chip_dataset
from engine.data.transforms import GeometricAugment, Sample, normalization_from_manifest


class _ChipDataset(Dataset):
    """Shared part: manifest, split checks and per-process lazy memory maps."""

    arrays: tuple[str, ...] = ("images",)

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        train: bool = False,
        augment: GeometricAugment | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.train = train
        self.augment = augment
        store = open_chip_dataset(self.root)  # validates manifest + every split's arrays; not kept (its maps pickle)
        self.manifest = store.manifest
        splits = self.manifest["splits"]
        if split not in splits:
            raise InputError(f"{self.root / 'manifest.json'}: expected split {split!r}, found splits {sorted(splits)}")
        self._length = int(splits[split])
        mean, _, scale_max = normalization_from_manifest(self.manifest)
        self.fill = np.asarray(mean, dtype=np.float64) * scale_max
        """Raw per-band value of the zoom-out canvas: the dataset mean."""
        self.seed: int | None = None
        """Seeds augmentation in the main process (num_workers=0); workers use torch's per-worker seeded RNG."""
        self._maps: dict[str, np.ndarray] = {}
        self._generator: torch.Generator | None = None
        self._pid = -1
        self._load_targets(store)

    def _load_targets(self, store: ChipDataset) -> None:
        """Per-task targets read from the manifest (detection boxes); masks come from the arrays."""

    def __len__(self) -> int:
        return self._length

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"], state["_generator"], state["_pid"] = {}, None, -1
        return state

    def _path(self, name: str) -> Path:
        return self.root / self.split / f"{name}.npy"

    def _own_process(self) -> None:
        """Forget maps and generator inherited from another process (fork), so each process opens its own."""
        if self._pid != os.getpid():
            self._maps, self._generator, self._pid = {}, None, os.getpid()

    def _array(self, name: str) -> np.ndarray:
        self._own_process()
        if name not in self._maps:
            self._maps[name] = np.load(self._path(name), mmap_mode="r")
        return self._maps[name]

    def _raw(self, index: int) -> Sample:
        if not 0 <= index < self._length:
            raise IndexError(f"chip index {index} out of range for split {self.split!r} ({self._length} chips)")
        sample: Sample = {"image": np.ascontiguousarray(self._array("images")[index].transpose(2, 0, 1))}
        if "masks" in self.arrays:
            sample["mask"] = np.array(self._array("masks")[index])
            sample["eroded"] = np.array(self._array("eroded")[index])
        return sample

    def _augmented(self, sample: Sample, seed: int | None = None) -> Sample:
        if not (self.train and self.augment is not None):
            return sample
        if seed is not None:  # an (index, seed) key from EpochStreamSampler: augmentation fixed by the stream
            return self.augment(sample, self.fill, torch.Generator().manual_seed(seed))
        self._own_process()
        if self._generator is None and self.seed is not None and get_worker_info() is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        return self.augment(sample, self.fill, self._generator)


def _split_key(key: int | tuple[int, int]) -> tuple[int, int | None]:
    """Items are addressed by an index, or by (index, augmentation seed) from a training stream sampler."""
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return int(key), None


class DetectionChips(_ChipDataset):
    """Detection items: ``{"image": (C,H,W) uint8/uint16, "boxes": float32 (K,4) xyxy px, "labels": int64 (K,)}``.

    Geometric augmentation is applied only when ``train`` is true and ``augment`` is given.
    """

    def _load_targets(self, store: ChipDataset) -> None:
        self.det_classes: tuple[str, ...] = tuple(store.det_classes)
        where = self.root / "manifest.json"
        for chip in store.chips(self.split):
            unknown = {entry[4] for entry in chip.get("boxes", [])} - set(self.det_classes)
            if unknown:
                raise InputError(
                    f"{where}: chip {chip.get('index')} of split {self.split!r} has boxes of classes "
                    f"{sorted(unknown)}, expected one of det_classes {list(self.det_classes)}"
                )
        targets = store.boxes(self.split)
        self._boxes = [boxes for boxes, _ in targets]
        self._labels = [labels for _, labels in targets]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = _split_key(key)
        sample = self._raw(index)
        sample["boxes"], sample["labels"] = self._boxes[index], self._labels[index]
        sample = self._augmented(sample, seed)
        return {
            "image": torch.from_numpy(sample["image"]),
            "boxes": torch.from_numpy(np.asarray(sample["boxes"], dtype=np.float32).reshape(-1, 4)),
            "labels": torch.from_numpy(np.asarray(sample["labels"], dtype=np.int64)),
        }


class SegmentationChips(_ChipDataset):
    """Segmentation items: ``{"image": (C,H,W), "mask": int64 (H,W), "eroded": int64 (H,W)}`` (255 = ignore)."""

    arrays = ("images", "masks", "eroded")

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = _split_key(key)
        sample = self._augmented(self._raw(index), seed)
        return {
            "image": torch.from_numpy(sample["image"]),
            "mask": torch.from_numpy(sample["mask"].astype(np.int64)),
            "eroded": torch.from_numpy(sample["eroded"].astype(np.int64)),
        }


def collate_detection(items: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack images; pad boxes to (B, Kmax, 4) with zeros and labels to (B, Kmax) with -1 (Kmax >= 1)."""
    kmax = max([1, *(len(item["labels"]) for item in items)])
    boxes = torch.zeros(len(items), kmax, 4, dtype=torch.float32)
    labels = torch.full((len(items), kmax), -1, dtype=torch.int64)
    for row, item in enumerate(items):
        k = len(item["labels"])
        boxes[row, :k] = item["boxes"]
        labels[row, :k] = item["labels"]
    return {"image": torch.stack([item["image"] for item in items]), "boxes": boxes, "labels": labels}


def collate_segmentation(items: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack images, masks and eroded masks."""
    return {key: torch.stack([item[key] for item in items]) for key in ("image", "mask", "eroded")}


def _loader(
    dataset: _ChipDataset,
    collate: Any,
    batch_size: int,
    num_workers: int,
    train: bool,
    distributed: bool,
    seed: int,
) -> DataLoader:
    if batch_size < 1 or num_workers < 0:
        raise ConfigError(f"loader: expected batch_size >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
    sampler = None
    rank = 0
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=train, seed=seed, drop_last=train)
        rank = sampler.rank
        per_rank = len(sampler)
    else:
        per_rank = len(dataset)
    if train and per_rank < batch_size:
        raise ConfigError(
            f"{dataset.root}: split {dataset.split!r} has {per_rank} chips per process, fewer than batch_size "
            f"{batch_size}; with drop_last no batch would be served — lower batch_size or add chips"
        )
    dataset.seed = seed + rank
    generator = torch.Generator().manual_seed(seed + rank)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        drop_last=train,
        persistent_workers=num_workers > 0,
        generator=generator,
    )


def make_loaders(
    det_root: str | os.PathLike[str],
    seg_root: str | os.PathLike[str],
    batch_size: int,
    num_workers: int,
    distributed: bool = False,
    seed: int = 0,
    augment: GeometricAugment | None = None,
) -> tuple[DataLoader, DataLoader]:
    """Training loaders (split "train", shuffled, geometric augmentation, drop_last) for the two tasks.

    Each loader's ``.dataset.manifest`` gives its own normalisation: build one
    ``DeviceAugment.from_manifest(loader.dataset.manifest)`` per loader. With ``distributed`` a
    ``DistributedSampler`` is used; call ``loader.sampler.set_epoch(epoch)`` each epoch.
    """
    augment = augment or GeometricAugment()
    det = DetectionChips(det_root, "train", train=True, augment=augment)
    seg = SegmentationChips(seg_root, "train", train=True, augment=augment)
    return (
        _loader(det, collate_detection, batch_size, num_workers, True, distributed, seed),
        _loader(seg, collate_segmentation, batch_size, num_workers, True, distributed, seed + 1),
    )


def make_eval_loader(
    root: str | os.PathLike[str],
    split: str,
    task: str,
    batch_size: int,
    num_workers: int = 0,
) -> DataLoader:
    """Evaluation loader (no augmentation, no shuffling, every chip) for ``task`` "det" or "seg"."""
    if task == "det":
        return _loader(DetectionChips(root, split), collate_detection, batch_size, num_workers, False, False, 0)
    if task == "seg":
        dataset = SegmentationChips(root, split)
        return _loader(dataset, collate_segmentation, batch_size, num_workers, False, False, 0)
    raise ConfigError(f"make_eval_loader: task must be 'det' or 'seg', got {task!r}")
