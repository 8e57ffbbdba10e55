"""An endless, resumable stream of (chip index, augmentation seed) pairs for training loaders.

Training takes a fixed number of batches per epoch from each dataset (the smaller one is cycled). This sampler
lays out that stream up front: epoch ``e`` draws permutations seeded by (seed, e, cycle), each rank takes its
shard, and every item carries its own augmentation seed. The stream depends only on (seed, epoch), never on how
far worker processes have run, so loaders can keep persistent workers and a run resumed at epoch ``e`` sees
exactly the batches and augmentations the uninterrupted run saw.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

_MIX = (1_000_003, 10_007, 101, 7)


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes, unlike ``hash``)."""
    value = 0x9E3779B97F4A7C15
    for part, factor in zip(parts, _MIX * 2):
        value = (value * 6364136223846793005 + (part + 1) * factor) % (1 << 63)
    return value


class EpochStreamSampler(Sampler[tuple[int, int]]):
    """Endless ``(index, seed)`` items: ``per_epoch`` of them for each epoch from ``start_epoch`` on."""

    def __init__(
        self, length: int, per_epoch: int, seed: int, rank: int = 0, world_size: int = 1, start_epoch: int = 0
    ) -> None:
        if length < 1 or per_epoch < 1:
            raise ValueError(f"EpochStreamSampler: need length >= 1 and per_epoch >= 1, got {length}, {per_epoch}")
        self.length, self.per_epoch, self.seed = length, per_epoch, seed
        self.rank, self.world_size, self.start_epoch = rank, world_size, start_epoch

    def epoch_items(self, epoch: int) -> Iterator[tuple[int, int]]:
        """The items of one epoch (this rank's shard)."""
        emitted, cycle = 0, 0
        while True:
            generator = torch.Generator().manual_seed(_mix(self.seed, epoch, cycle))
            shard = torch.randperm(self.length, generator=generator)[self.rank :: self.world_size].tolist()
            for position, index in enumerate(shard):
                yield index, _mix(self.seed, epoch, cycle, position, self.rank + 1)
                emitted += 1
                if emitted == self.per_epoch:
                    return
            cycle += 1

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.start_epoch
        while True:
            yield from self.epoch_items(epoch)
            epoch += 1
