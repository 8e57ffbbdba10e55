"""Train/val/test splits without leakage: whole tiles, or spatial blocks, drawn with fractions and a seed.

Chips are grouped by the tile (``tile``) or by the square block of the tile their centre falls in (``block``);
groups are shuffled with the seed and the first ``round(n * test)`` go to test, the next ``round(n * val)`` to val,
the rest to train. Overlapping chips (stride < size) of different splits would share pixels, so train chips that
overlap a val/test chip and val chips that overlap a test chip are dropped: no pixel is in two splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.core.errors import ConfigError, param_ref
from engine.core.options import ChipOptions

SPLIT_MODES = ("tile", "block")
_PRIORITY = {"test": 0, "val": 1, "train": 2}


@dataclass(frozen=True)
class SplitPlan:
    """How chips are split: by ``tile`` or ``block`` (of ``block`` px), fractions, seed."""

    mode: str = "block"
    val: float = ChipOptions.val_fraction
    test: float = 0.0
    seed: int = ChipOptions.seed
    block: int = 512

    def __post_init__(self) -> None:
        if self.mode not in SPLIT_MODES:
            raise ConfigError(f"{param_ref('split_by')}: expected one of {list(SPLIT_MODES)}, found {self.mode!r}")
        if not (0 <= self.val < 1 and 0 <= self.test < 1 and self.val + self.test < 1):
            raise ConfigError(
                f"{param_ref('val_fraction')}/{param_ref('test_fraction')}: expected fractions >= 0 with a sum "
                f"below 1, found {self.val} and {self.test}"
            )
        if self.block < 1:
            raise ConfigError(f"{param_ref('block')}: expected a block side of at least 1 px, found {self.block}")

    def as_dict(self) -> dict[str, object]:
        return {"split_by": self.mode, "val_fraction": self.val, "test_fraction": self.test, "seed": self.seed,
                "block": self.block if self.mode == "block" else None}  # fmt: skip


def default_val_fraction(task: str) -> float:
    """The validation share when the caller gives none: ``ChipOptions.unlabelled_val_fraction`` for imagery-only
    chips (task ``none``: training reads only the train split of unlabelled chips, so none is held out), else
    ``ChipOptions.val_fraction``."""
    return ChipOptions.unlabelled_val_fraction if task == "none" else ChipOptions.val_fraction


def group_of(plan: SplitPlan, tile: int, window: Sequence[int]) -> tuple[int, int, int]:
    """The group a chip belongs to: its tile, or (tile, block row, block column) of its centre."""
    if plan.mode == "tile":
        return (tile, 0, 0)
    x, y, w, h = window
    return (tile, (y + h // 2) // plan.block, (x + w // 2) // plan.block)


def assign_groups(plan: SplitPlan, groups: Sequence[tuple[int, int, int]]) -> dict[tuple[int, int, int], str]:
    """Split of each distinct group (reproducible for a seed; train always gets at least one group)."""
    distinct = sorted(set(groups))
    order = np.random.default_rng(plan.seed).permutation(len(distinct))
    n = len(distinct)
    n_test = round(n * plan.test)
    n_val = round(n * plan.val)
    if n > 1 and plan.val > 0 and n_val == 0:
        n_val = 1
    if n_test + n_val >= n:  # keep one group for training
        n_val = max(0, n - 1 - n_test)
        n_test = min(n_test, n - 1)
    names = ["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val)
    return {distinct[i]: names[rank] for rank, i in enumerate(order)}


def drop_overlaps(tiles: Sequence[int], windows: np.ndarray, splits: Sequence[str]) -> np.ndarray:
    """Bool keep-mask: chips overlapping a chip of a higher-priority split (test > val > train) are dropped."""
    tiles_a = np.asarray(tiles)
    rank = np.array([_PRIORITY[s] for s in splits])
    keep = np.ones(len(splits), bool)
    for tile in np.unique(tiles_a):
        idx = np.flatnonzero(tiles_a == tile)
        x, y, w, h = (windows[idx, k] for k in range(4))
        overlap = (
            (x[:, None] < (x + w)[None, :])
            & (x[None, :] < (x + w)[:, None])
            & (y[:, None] < (y + h)[None, :])
            & (y[None, :] < (y + h)[:, None])
        )
        beaten = overlap & (rank[idx][None, :] < rank[idx][:, None])
        keep[idx[beaten.any(axis=1)]] = False
    return keep
