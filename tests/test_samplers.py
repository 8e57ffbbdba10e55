"""The training stream sampler: what makes persistent loader workers compatible with exact resume."""

from __future__ import annotations

import itertools

import torch

from engine.data.datasets import SegmentationChips
from engine.data.samplers import EpochStreamSampler
from engine.data.transforms import GeometricAugment
from tests.chipfixtures import write_chip_dataset


def _take(sampler: EpochStreamSampler, count: int) -> list[tuple[int, int]]:
    return list(itertools.islice(iter(sampler), count))


def test_epoch_items_do_not_depend_on_where_the_stream_started():
    full = _take(EpochStreamSampler(length=7, per_epoch=10, seed=3), 30)
    resumed = _take(EpochStreamSampler(length=7, per_epoch=10, seed=3, start_epoch=2), 10)
    assert resumed == full[20:30]
    assert full[:10] != full[10:20]  # epochs differ


def test_each_cycle_is_a_permutation_and_every_item_has_its_own_seed():
    items = list(EpochStreamSampler(length=5, per_epoch=12, seed=0).epoch_items(0))
    assert len(items) == 12
    assert sorted(i for i, _ in items[:5]) == [0, 1, 2, 3, 4]
    assert sorted(i for i, _ in items[5:10]) == [0, 1, 2, 3, 4]
    assert len({s for _, s in items}) == 12


def test_ranks_take_disjoint_shards_of_the_same_permutation():
    a = list(EpochStreamSampler(length=8, per_epoch=4, seed=1, rank=0, world_size=2).epoch_items(0))
    b = list(EpochStreamSampler(length=8, per_epoch=4, seed=1, rank=1, world_size=2).epoch_items(0))
    assert {i for i, _ in a}.isdisjoint({i for i, _ in b})
    assert {i for i, _ in a} | {i for i, _ in b} == set(range(8))


def test_a_seeded_key_gives_the_same_augmented_item_every_time(tmp_path):
    root = write_chip_dataset(tmp_path / "chips", {"train": 3, "val": 1}, size=64)
    data = SegmentationChips(root, "train", train=True, augment=GeometricAugment())
    first, again, other = data[(1, 123)], data[(1, 123)], data[(1, 124)]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["mask"], again["mask"])
    assert any(not torch.equal(first[k], other[k]) for k in ("image", "mask"))
