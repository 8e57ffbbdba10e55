"""Torch datasets over chip datasets (docs/ARCHITECTURE.md "Chip dataset format" / "Batches") and the loaders.

Arrays are memory-mapped lazily, once per process, and never pickled: DataLoader workers (fork or spawn) each open
their own read-only maps, so the page cache is shared and nothing large crosses process boundaries.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, get_worker_info

from engine.core.bands import bands_by_name, input_order
from engine.core.errors import ConfigError, InputError
from engine.data.chipstore import ChipDataset, open_chip_dataset
from engine.data.samplers import EpochStreamSampler
from engine.data.transforms import GeometricAugment, Sample, normalization_from_manifest

log = logging.getLogger(__name__)


def _canvas_fill(manifest: Mapping[str, Any]) -> np.ndarray:
    """The dataset mean in raw values (the zoom-out canvas); 0 for an unlabelled dataset without statistics."""
    if manifest.get("task") == "none" and "mean" not in manifest:
        return np.zeros(len(manifest["bands"]), np.float64)
    mean, _, scale_max = normalization_from_manifest(manifest)
    return np.asarray(mean, dtype=np.float64) * scale_max


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
        self.fill = _canvas_fill(self.manifest)
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
        # always a copy: for one band the transposed slice is already contiguous, i.e. a read-only view of the map
        sample: Sample = {"image": np.array(self._array("images")[index].transpose(2, 0, 1), order="C")}
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


class _ImageChips(_ChipDataset):
    """One chip dataset read for its imagery only (labels, if any, are ignored): a part of the unlabelled stream."""

    def __init__(
        self, root: str | os.PathLike[str], split: str, train: bool, augment: GeometricAugment | None, order: list[int]
    ) -> None:
        super().__init__(root, split, train=train, augment=augment)
        self.order = order
        """Band order that maps this dataset's bands to the stream's (identity unless the names are permuted)."""
        self.fill = self.fill[order]  # the zoom-out canvas in the order the image is read in

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        index, seed = _split_key(key)
        sample = self._augmented({"image": self._raw(index)["image"][self.order]}, seed)
        return torch.from_numpy(np.ascontiguousarray(sample["image"]))


def unlabelled_split(manifest: Mapping[str, Any], split: str) -> list[str]:
    """The splits of an unlabelled dataset the stream reads: ``split`` (train) when it has one, else all of them
    (an ``engine.chip --task none`` folder of the user's imagery has nothing held out)."""
    splits = sorted(manifest["splits"])
    return [split] if split in splits else splits


def band_order(root: Path, bands: Sequence[str], model_bands: Sequence[str], key: str) -> list[int]:
    """Indices that put a dataset's bands in the model's order (:func:`engine.core.bands.input_order`): the model's
    names picked by name (permuted, or out of a larger product), otherwise kept in order (as predict does when no
    band map is given); a different band COUNT without the model's names is a ConfigError."""
    order = input_order(bands, model_bands)
    if order is None:
        raise ConfigError(
            f"config key '{key}' ({root}): expected chips with {len(model_bands)} bands {list(model_bands)} like the "
            f"training data, found {len(bands)} bands {list(bands)}; re-chip the imagery with matching bands"
        )
    if bands_by_name(bands, model_bands) is None and list(bands) != list(model_bands):
        log.warning("%s: bands %s are used in order as the model's %s", root, list(bands), list(model_bands))
    return order


def stream_bands(manifests: Sequence[Mapping[str, Any]], model_bands: Sequence[str]) -> list[str]:
    """The bands of the unlabelled stream's batches: the model's (each dataset read in the model's order,
    :func:`band_order`), unless the datasets hold a larger product that includes the model's bands by name (RGBIR
    for an IRRG model): then that product, whole, in the first dataset's order, so each teacher can take its own
    bands from it."""
    first = list(manifests[0]["bands"])
    larger = len(first) > len(model_bands) and bands_by_name(first, model_bands) is not None
    alike = all(len(m["bands"]) == len(first) and bands_by_name(m["bands"], first) is not None for m in manifests)
    return first if larger and alike else list(model_bands)


class UnlabelledChips(Dataset):
    """The unlabelled stream: imagery of one or more chip datasets (``data.unlabelled``), items ``(C,H,W)`` images.

    Any pmtl chip dataset works, labelled or not (``"task": "none"`` manifests have no label arrays); its training
    split is used when it has one, else every split. Items carry :attr:`bands` (:func:`stream_bands`): each network
    of the run picks its own bands from them.
    """

    def __init__(
        self,
        roots: Sequence[str | os.PathLike[str]],
        split: str,
        model_bands: Sequence[str],
        train: bool = True,
        augment: GeometricAugment | None = None,
        key: str = "data.unlabelled",
    ) -> None:
        self.parts: list[_ImageChips] = []
        manifests = [open_chip_dataset(root).manifest for root in roots]
        self.bands = stream_bands(manifests, model_bands)
        for root, manifest in zip(roots, manifests):
            order = band_order(Path(root), manifest["bands"], self.bands, key)
            for name in unlabelled_split(manifest, split):
                self.parts.append(_ImageChips(root, name, train, augment, order))
        self.root = Path(roots[0]) if len(roots) == 1 else Path(os.path.commonpath([str(r) for r in roots]))
        self.split = split
        self.manifests = [part.manifest for part in self.parts]
        scalings = {json.dumps(m["value_scaling"], sort_keys=True) for m in self.manifests}
        if len(scalings) > 1:
            raise ConfigError(
                f"config key '{key}': expected chip datasets with one value scaling (dtype and max), found "
                f"{sorted(scalings)}; re-chip them alike"
            )
        self._offsets = np.cumsum([0, *(len(part) for part in self.parts)])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        index, seed = _split_key(key)
        part = int(np.searchsorted(self._offsets, index, side="right")) - 1
        local = index - int(self._offsets[part])
        return self.parts[part][(local, seed) if seed is not None else local]


def collate_unlabelled(items: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stack images (the stream has no targets)."""
    return {"image": torch.stack(list(items))}


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


def make_train_loader(
    dataset: _ChipDataset | UnlabelledChips,
    batch_size: int,
    num_workers: int,
    seed: int,
    per_epoch_batches: int,
    start_epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless training batches for a whole run: ``per_epoch_batches`` per epoch from ``start_epoch`` on.

    Order and augmentation come from :class:`EpochStreamSampler` (fixed by seed and epoch, sharded by rank), so
    workers stay alive across epochs and a resumed run sees exactly the batches of the uninterrupted one.
    """
    if batch_size < 1 or num_workers < 0:
        raise ConfigError(f"loader: expected batch_size >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
    if len(dataset) // world_size < batch_size:
        raise ConfigError(
            f"{dataset.root}: split {dataset.split!r} has {len(dataset)} chips for {world_size} process(es), "
            f"fewer than batch_size {batch_size} per process — lower batch_size or add chips"
        )
    sampler = EpochStreamSampler(len(dataset), per_epoch_batches * batch_size, seed, rank, world_size, start_epoch)
    collate = {DetectionChips: collate_detection, UnlabelledChips: collate_unlabelled}.get(
        type(dataset), collate_segmentation
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    return iter(loader)


def make_eval_loader(
    root: str | os.PathLike[str],
    split: str,
    task: str,
    batch_size: int,
    num_workers: int = 0,
    shard: tuple[int, int] = (0, 1),
    max_chips: int | None = None,
) -> DataLoader:
    """Evaluation batches (no augmentation, fixed order) of the first ``max_chips`` chips; ``shard=(rank, world)``
    gives this rank every world-th chip."""
    if task not in ("det", "seg"):
        raise ConfigError(f"make_eval_loader: task must be 'det' or 'seg', got {task!r}")
    if batch_size < 1 or num_workers < 0:
        raise ConfigError(f"loader: expected batch_size >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
    dataset = DetectionChips(root, split) if task == "det" else SegmentationChips(root, split)
    count = len(dataset) if max_chips is None else min(max_chips, len(dataset))
    rank, world = shard
    return DataLoader(
        Subset(dataset, range(rank, count, world)),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_detection if task == "det" else collate_segmentation,
    )
